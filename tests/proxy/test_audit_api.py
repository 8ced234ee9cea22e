"""The audit and review HTTP API on both stores: admin keys only, a tenant's admin sees only that
tenant, cursor pagination and filters, and the review queue (flagged image held, approve/reject,
each decision an audit record in the chain)."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

from policies.decisions import Action, Decision
from proxy.app import GATEWAY, StageDeps, default_stages
from proxy.exchange import Exchange
from proxy.pipeline import BaseStage, Stage
from proxy.settings import Settings
from tests.conftest import ADMIN_KEY, OTHER_TENANT_KEY, TENANT_KEY, digest, make_settings
from tests.proxy.audit_backends import Backend, backend  # noqa: F401  (fixture)

OTHER_ADMIN_KEY = "sk-test-globex-admin"


class FlagWhenAsked(BaseStage):
    """Stands in for the output classifier: flags every image of a prompt that contains `flagme`."""

    name = "output_classifier"

    async def on_response(self, exchange: Exchange) -> None:
        if exchange.result is None or exchange.request is None or "flagme" not in exchange.request.prompt:
            return
        for index, image in enumerate(exchange.result.images):
            image.verdict = {"action": "flag", "category": "violence", "score": 0.61}
            exchange.decide(
                Decision(stage=self.name, action=Action.FLAG, category="violence", score=0.61, reason="borderline", image_index=index)
            )


def flagging_stages(settings: Settings, deps: StageDeps) -> Sequence[Stage]:
    return [FlagWhenAsked() if stage.name == "output_classifier" else stage for stage in default_stages(settings, deps)]


def audit_settings(tmp_path: Path, backend: Backend) -> Settings:
    audit = {**backend.audit_settings(), "purge_interval_s": 0}
    if backend.name == "sqlite":
        audit["sqlite_path"] = str(tmp_path / "audit.sqlite3")
    return make_settings(
        tmp_path,
        audit=audit,
        tenants={
            "globex": {
                "api_key_sha256": [digest(OTHER_TENANT_KEY)],
                "admin_key_sha256": [digest(OTHER_ADMIN_KEY)],
                "audit_prompts": "hash",
            }
        },
    )


async def generate(session: aiohttp.ClientSession, base: str, prompt: str, key: str = TENANT_KEY, user: str = "u-1") -> dict[str, Any]:
    async with session.post(
        f"{base}/images/generations",
        json={"model": "demo", "prompt": prompt, "size": "64x64"},
        headers={"Authorization": f"Bearer {key}", "X-Imagegate-User": user},
    ) as response:
        body = await response.json()
        assert response.status == 200, body
        return {"audit_id": response.headers["X-Imagegate-Audit-Id"], "image": base64.b64decode(body["data"][0]["b64_json"])}


async def get(session: aiohttp.ClientSession, url: str, key: str | None = ADMIN_KEY) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with session.get(url, headers=headers) as response:
        if response.content_type == "application/json":
            return response.status, await response.json()
        return response.status, await response.read()


async def test_records_are_for_admin_keys_only_with_filters_and_cursor(tmp_path: Path, backend: Backend, start_gateway) -> None:
    _, base = await start_gateway(audit_settings(tmp_path, backend), stages=flagging_stages)
    async with aiohttp.ClientSession() as session:
        made = [await generate(session, base, f"a calm lake {i}", user=f"u-{i % 2}") for i in range(5)]
        flagged = await generate(session, base, "flagme please")
        assert (await get(session, f"{base}/audit/records", key=None))[0] == 401
        status, body = await get(session, f"{base}/audit/records", key=TENANT_KEY)
        assert status == 403 and body["error"]["code"] == "permission_denied"

        status, page = await get(session, f"{base}/audit/records?limit=4")
        assert status == 200 and len(page["data"]) == 4 and page["next_cursor"]
        assert page["data"][0]["id"] == flagged["audit_id"]  # newest first
        status, rest = await get(session, f"{base}/audit/records?limit=4&cursor={page['next_cursor']}")
        seen = [r["id"] for r in page["data"] + rest["data"]]
        assert seen == [flagged["audit_id"], *[m["audit_id"] for m in reversed(made)]] and rest["next_cursor"] is None

        status, oldest = await get(session, f"{base}/audit/records?order=asc&limit=2")
        assert [r["id"] for r in oldest["data"]] == [made[0]["audit_id"], made[1]["audit_id"]]
        _, only = await get(session, f"{base}/audit/records?decision=flag")
        assert [r["id"] for r in only["data"]] == [flagged["audit_id"]]
        _, only = await get(session, f"{base}/audit/records?category=violence&outcome=flag")
        assert [r["id"] for r in only["data"]] == [flagged["audit_id"]]
        _, users = await get(session, f"{base}/audit/records?user=u-1&model=demo")
        assert {r["end_user"] for r in users["data"]} == {"u-1"} and len(users["data"]) == 3
        _, none = await get(session, f"{base}/audit/records?since=2999-01-01")
        assert none["data"] == []
        _, recent = await get(session, f"{base}/audit/records?since=1h&until=2999-01-01T00:00:00Z")
        assert len(recent["data"]) == 6
        assert (await get(session, f"{base}/audit/records?since=yesterday"))[0] == 400
        assert (await get(session, f"{base}/audit/records?cursor=zzz"))[0] == 400
        assert (await get(session, f"{base}/audit/records?cursor="))[0] == 400
        # A misspelt filter would widen the read silently: refused, naming the parameter.
        status, body = await get(session, f"{base}/audit/records?modle=demo")
        assert status == 400 and body["error"]["param"] == "modle" and "model" in body["error"]["message"]
        status, body = await get(session, f"{base}/review/items?stauts=all")
        assert status == 400 and body["error"]["param"] == "stauts"

        status, record = await get(session, f"{base}/audit/records/{made[0]['audit_id']}")
        assert status == 200 and record["prompt"] == "a calm lake 0" and record["chain"]["seq"] == 1
        assert len(record["chain"]["hash"]) == 64 and "prompt" in record["chain"]["digests"]


async def test_a_tenant_admin_cannot_read_another_tenants_trail(tmp_path: Path, backend: Backend, start_gateway) -> None:
    _, base = await start_gateway(audit_settings(tmp_path, backend), stages=flagging_stages)
    async with aiohttp.ClientSession() as session:
        acme = await generate(session, base, "flagme acme secret")
        globex = await generate(session, base, "globex things", key=OTHER_TENANT_KEY)
        _, page = await get(session, f"{base}/audit/records", key=OTHER_ADMIN_KEY)
        assert [r["id"] for r in page["data"]] == [globex["audit_id"]]
        assert page["data"][0]["prompt"] is None  # globex keeps prompts as hashes only
        status, body = await get(session, f"{base}/audit/records?tenant=acme", key=OTHER_ADMIN_KEY)
        assert status == 403
        assert (await get(session, f"{base}/audit/records/{acme['audit_id']}", key=OTHER_ADMIN_KEY))[0] == 404
        assert (await get(session, f"{base}/audit/records/{acme['audit_id']}/images/0", key=OTHER_ADMIN_KEY))[0] == 404
        _, items = await get(session, f"{base}/review/items", key=OTHER_ADMIN_KEY)
        assert items["data"] == []
        _, acme_items = await get(session, f"{base}/review/items")
        item_id = acme_items["data"][0]["id"]
        assert (await get(session, f"{base}/review/items/{item_id}", key=OTHER_ADMIN_KEY))[0] == 404
        assert (await get(session, f"{base}/review/items/{item_id}/image", key=OTHER_ADMIN_KEY))[0] == 404
        async with session.post(
            f"{base}/review/items/{item_id}", json={"decision": "approve"}, headers={"Authorization": f"Bearer {OTHER_ADMIN_KEY}"}
        ) as response:
            assert response.status == 404


async def test_review_queue_holds_flagged_images_and_records_each_decision(tmp_path: Path, backend: Backend, start_gateway) -> None:
    server, base = await start_gateway(audit_settings(tmp_path, backend), stages=flagging_stages)
    async with aiohttp.ClientSession() as session:
        await generate(session, base, "nothing to see")
        first = await generate(session, base, "flagme one")
        second = await generate(session, base, "flagme two")
        _, items = await get(session, f"{base}/review/items")
        assert [i["audit_id"] for i in items["data"]] == [first["audit_id"], second["audit_id"]]
        item = items["data"][0]
        assert item["status"] == "pending" and item["image_retained"] and item["verdicts"][0]["category"] == "violence"
        status, image = await get(session, f"{base}/review/items/{item['id']}/image")
        assert status == 200 and image == first["image"]
        status, image = await get(session, f"{base}/audit/records/{first['audit_id']}/images/0")
        assert status == 200 and image == first["image"]
        _, record = await get(session, f"{base}/audit/records/{first['audit_id']}")
        assert record["retained_images"][0]["review_item"] == item["id"] and record["review_items"][0]["status"] == "pending"

        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        async with session.post(f"{base}/review/items/{item['id']}", json={"decision": "maybe"}, headers=headers) as response:
            assert response.status == 400
        async with session.post(f"{base}/review/items/{item['id']}", json={"decision": "approve"}, headers={"Authorization": f"Bearer {TENANT_KEY}"}) as response:
            assert response.status == 403
        async with session.post(f"{base}/review/items/{item['id']}", json={"decision": "approve", "note": "satire"}, headers=headers) as response:
            decided = await response.json()
            assert response.status == 200 and decided["item"]["status"] == "approved" and decided["item"]["note"] == "satire"
        async with session.post(f"{base}/review/items/{item['id']}", json={"decision": "reject"}, headers=headers) as response:
            assert response.status == 409
        async with session.post(f"{base}/review/items/{items['data'][1]['id']}", json={"decision": "reject"}, headers=headers) as response:
            assert response.status == 200

        _, pending = await get(session, f"{base}/review/items")
        assert pending["data"] == []
        _, done = await get(session, f"{base}/review/items?status=all")
        assert [i["status"] for i in done["data"]] == ["approved", "rejected"]
        _, reviews = await get(session, f"{base}/audit/records?outcome=review&order=asc")
        assert [r["review"]["decision"] for r in reviews["data"]] == ["approve", "reject"]
        assert reviews["data"][0]["review"]["subject_audit_id"] == first["audit_id"]
        assert reviews["data"][0]["id"] == decided["audit_id"] and reviews["data"][0]["decisions"][0]["action"] == "allow"
    report = await server.app[GATEWAY].audit.verify()
    # three generations, two review decisions and the seven admin reads above (each GET that answered 200), one chain
    assert report.ok and report.records == 5 + 7


async def test_admin_page_is_served_with_a_strict_content_security_policy(tmp_path: Path, backend: Backend, start_gateway) -> None:
    server, base = await start_gateway(audit_settings(tmp_path, backend))
    root = base.removesuffix("/v1")
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{root}/admin") as response:
            assert response.status == 200 and str(response.url).endswith("/admin/")
            assert "default-src 'self'" in response.headers["Content-Security-Policy"]
            assert "<script src=\"/admin/app.js\"" in await response.text()
        async with session.get(f"{root}/admin/app.js") as response:
            assert response.status == 200 and response.content_type == "text/javascript"
        async with session.get(f"{root}/admin/..%2Fsettings.py") as response:
            assert response.status == 404
