"""Admin reads of the audit trail and the review queue are audited, on both stores: each successful
GET writes one `admin_read` record (who, from where, which filters, which ids) in the same chain,
before the answer is released; a failed write withholds the answer (503 `audit_unavailable`);
listings leave these records out unless `outcome=admin_read` asks for them; `audit.log_admin_reads:
false` writes none."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from proxy.app import GATEWAY
from proxy.cli import main as imagegate_cli
from proxy.settings import Settings
from proxy.stores.audit import ADMIN_READ, AuditQuery, AuditStore, ReviewQuery
from tests.conftest import ADMIN_KEY, TENANT_KEY, digest
from tests.proxy.audit_backends import Backend, backend  # noqa: F401  (fixture)
from tests.proxy.test_audit_api import audit_settings, flagging_stages, generate

OFFICER = "officer-7"


async def read(
    session: aiohttp.ClientSession, url: str, *, key: str = ADMIN_KEY, request_id: str | None = None
) -> tuple[int, Any, dict[str, str]]:
    headers = {"Authorization": f"Bearer {key}", "X-Imagegate-User": OFFICER}
    if request_id:
        headers["X-Request-Id"] = request_id
    async with session.get(url, headers=headers) as response:
        body = await response.json() if response.content_type == "application/json" else await response.read()
        return response.status, body, dict(response.headers)


async def admin_reads(store: AuditStore) -> list[dict[str, Any]]:
    return await store.query(AuditQuery(outcome=ADMIN_READ, order="asc", limit=500))


async def row_count(backend: Backend) -> int:
    return int((await backend.execute("SELECT count(*) FROM {p}audit_records"))[0][0])


async def cli(argv: list[str]) -> int:
    import asyncio

    return await asyncio.to_thread(imagegate_cli, argv)


def write_config(tmp_path: Path, settings: Settings) -> Path:
    config = tmp_path / "imagegate.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    return config


async def flagged_trail(session: aiohttp.ClientSession, base: str, store: AuditStore) -> tuple[str, str, dict[str, Any]]:
    """One plain and one flagged generation; the flagged image's review item, read from the store
    (not through the API, whose reads are themselves audited)."""
    plain = (await generate(session, base, "a calm lake"))["audit_id"]
    flagged = (await generate(session, base, "flagme please"))["audit_id"]
    [item] = await store.review_items(ReviewQuery(tenant="acme"))
    assert item["audit_id"] == flagged and item["image_index"] == 0
    return plain, flagged, item


def read_routes(plain: str, flagged: str, item: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every audited read route, with the `access` its record must carry."""
    review = {"ids": [item["id"]], "subject_audit_ids": [flagged]}
    image = {"image_index": 0, "image_sha256": item["sha256"]}
    return [
        (
            "/audit/records?limit=10&model=demo&order=desc",
            {"resource": "audit_records", "filters": {"limit": "10", "model": "demo", "order": "desc"}, "returned": 2, "ids": [flagged, plain]},
        ),
        (f"/audit/records/{plain}", {"resource": "audit_record", "returned": 1, "ids": [plain]}),
        (f"/audit/records/{flagged}/images/0", {"resource": "audit_record_image", "returned": 1, "ids": [flagged], **image}),
        ("/review/items?status=pending", {"resource": "review_items", "filters": {"status": "pending"}, "returned": 1, **review}),
        (f"/review/items/{item['id']}", {"resource": "review_item", "returned": 1, **review}),
        (f"/review/items/{item['id']}/image", {"resource": "review_item_image", "returned": 1, **review, **image}),
    ]


async def test_each_admin_read_writes_one_record_naming_who_read_what(tmp_path: Path, backend: Backend, start_gateway) -> None:
    server, base = await start_gateway(audit_settings(tmp_path, backend), stages=flagging_stages)
    gateway = server.app[GATEWAY]
    async with aiohttp.ClientSession() as session:
        plain, flagged, item = await flagged_trail(session, base, gateway.audit)
        for n, (path, access) in enumerate(read_routes(plain, flagged, item)):
            before_rows, before = await row_count(backend), await admin_reads(gateway.audit)
            started = time.time()
            status, _, headers = await read(session, base + path, request_id=f"req-read-{n}")
            assert status == 200, path
            assert await row_count(backend) == before_rows + 1, f"{path} wrote more or less than one record"
            after = await admin_reads(gateway.audit)
            assert after[: len(before)] == before and len(after) == len(before) + 1
            record = after[-1]
            assert record["id"] == headers["X-Imagegate-Audit-Id"]
            assert record["access"] == access, path
            assert {k: record[k] for k in ("operation", "outcome", "route", "tenant", "key_id", "end_user", "client_address", "status", "request_id")} == {
                "operation": "admin_read",
                "outcome": "admin_read",
                "route": "/v1" + path.partition("?")[0],
                "tenant": "acme",
                "key_id": digest(ADMIN_KEY)[:12],
                "end_user": OFFICER,
                "client_address": "127.0.0.1",
                "status": 200,
                "request_id": f"req-read-{n}",
            }
            assert started <= record["time"] <= time.time()
            assert record["policy_version"] == gateway.policy_version
            assert ADMIN_KEY not in json.dumps(await gateway.audit.get(record["id"]))  # never the credential itself

        # Nothing was read, so nothing is recorded: an unknown id (404), a non-admin key (403).
        rows = await row_count(backend)
        assert (await read(session, f"{base}/audit/records/aud_missing"))[0] == 404
        assert (await read(session, f"{base}/review/items/{item['id']}", key=TENANT_KEY))[0] == 403
        assert await row_count(backend) == rows
    report = await gateway.audit.verify()
    assert report.ok and report.records == 2 + 6  # two generations and six reads, one chain


async def test_listings_leave_admin_reads_out_unless_asked_and_the_chain_still_verifies(
    tmp_path: Path, backend: Backend, start_gateway, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = audit_settings(tmp_path, backend)
    server, base = await start_gateway(settings, stages=flagging_stages)
    store = server.app[GATEWAY].audit
    async with aiohttp.ClientSession() as session:
        plain, flagged, item = await flagged_trail(session, base, store)
        await read(session, f"{base}/audit/records/{plain}")
        await read(session, f"{base}/review/items")

        _, page, _ = await read(session, f"{base}/audit/records")  # the default listing: exchanges only
        assert [r["id"] for r in page["data"]] == [flagged, plain]
        _, page, _ = await read(session, f"{base}/audit/records?order=asc&limit=1")
        assert [r["id"] for r in page["data"]] == [plain]
        _, page, _ = await read(session, f"{base}/audit/records?order=asc&limit=1&cursor={page['next_cursor']}")
        assert [r["id"] for r in page["data"]] == [flagged]
        _, page, _ = await read(session, f"{base}/audit/records?outcome=allow")
        assert [r["id"] for r in page["data"]] == [plain]

        _, reads, _ = await read(session, f"{base}/audit/records?outcome=admin_read&order=asc")
        assert [r["access"]["resource"] for r in reads["data"]] == ["audit_record", "review_items", *["audit_records"] * 4]
        assert reads["data"][0]["access"]["ids"] == [plain] and {r["end_user"] for r in reads["data"]} == {OFFICER}
        _, newest, _ = await read(session, f"{base}/audit/records?outcome=admin_read&limit=2")
        assert newest["data"][0]["access"]["filters"] == {"outcome": "admin_read", "order": "asc"}  # the listing just above
        assert newest["data"][1]["id"] == reads["data"][-1]["id"] and newest["next_cursor"]
        _, page, _ = await read(session, f"{base}/audit/records?outcome=admin_read&user=someone-else")
        assert page["data"] == []

    # The store itself, as `imagegate audit query/export` uses it: the same rule.
    assert [r["id"] for r in await store.query(AuditQuery())] == [plain, flagged]
    assert [r["id"] for r in await store.query(AuditQuery(tenant="acme", order="desc", limit=10))] == [flagged, plain]
    all_reads = await store.query(AuditQuery(outcome=ADMIN_READ))
    assert len(all_reads) == 9 and {r["operation"] for r in all_reads} == {"admin_read"}
    report = await store.verify()
    assert report.ok and report.records == 2 + 9
    await server.close()

    config = write_config(tmp_path, settings)
    assert await cli(["audit", "verify", "--config", str(config)]) == 0
    assert "OK: the chain verifies" in capsys.readouterr().out
    assert await cli(["audit", "query", "--config", str(config)]) == 0
    assert [json.loads(line)["id"] for line in capsys.readouterr().out.splitlines()] == [plain, flagged]
    assert await cli(["audit", "query", "--config", str(config), "--outcome", "admin_read", "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 + 9 and all(",admin_read," in line for line in lines[1:])
    export = tmp_path / "reads.jsonl"
    argv = ["audit", "export", "--config", str(config), "--since", "1d", "--until", "2999-01-01", "--outcome", "admin_read", "--out", str(export)]
    assert await cli(argv) == 0
    exported = [json.loads(line) for line in export.read_text().splitlines()]
    assert [r["id"] for r in exported] == [r["id"] for r in all_reads] and all(len(r["chain"]["hash"]) == 64 for r in exported)


async def test_a_read_that_cannot_be_recorded_is_withheld(tmp_path: Path, backend: Backend, start_gateway) -> None:
    server, base = await start_gateway(audit_settings(tmp_path, backend), stages=flagging_stages)
    gateway = server.app[GATEWAY]
    async with aiohttp.ClientSession() as session:
        plain, flagged, item = await flagged_trail(session, base, gateway.audit)
        rows = await row_count(backend)
        await refuse_admin_reads(backend, True)  # the database itself refuses the records of reads
        routes = read_routes(plain, flagged, item)
        for path, _ in routes:
            status, body, headers = await read(session, base + path)
            assert status == 503, path
            assert body["error"]["code"] == "audit_unavailable" and body["error"]["type"] == "server_error"
            assert "X-Imagegate-Audit-Id" not in headers
            text = json.dumps(body)
            assert plain not in text and flagged not in text and item["id"] not in text and "calm lake" not in text
        assert await row_count(backend) == rows
        assert gateway.metrics.registry.get_sample_value("imagegate_audit_write_failures_total") == len(routes)

        await refuse_admin_reads(backend, False)  # the store recovers: reads are recorded and answered again
        status, body, headers = await read(session, f"{base}/audit/records/{plain}")
        assert status == 200 and body["id"] == plain
        assert [r["id"] for r in await admin_reads(gateway.audit)] == [headers["X-Imagegate-Audit-Id"]]
    assert (await gateway.audit.verify()).ok


async def refuse_admin_reads(backend: Backend, refuse: bool) -> None:
    """A trigger that makes the store's own INSERT fail for admin-read records (a real write failure
    inside the store's transaction, not a stub)."""
    if backend.name == "sqlite":
        if refuse:
            await backend.execute(
                "CREATE TRIGGER refuse_reads BEFORE INSERT ON audit_records WHEN NEW.outcome = 'admin_read'"
                " BEGIN SELECT RAISE(ABORT, 'no room for admin reads'); END"
            )
        else:
            await backend.execute("DROP TRIGGER refuse_reads")
        return
    if refuse:
        await backend.execute(
            "CREATE FUNCTION {p}refuse_reads() RETURNS trigger LANGUAGE plpgsql AS $body$ BEGIN"
            " IF NEW.outcome = 'admin_read' THEN RAISE EXCEPTION 'no room for admin reads'; END IF; RETURN NEW; END $body$"
        )
        await backend.execute(
            "CREATE TRIGGER refuse_reads BEFORE INSERT ON {p}audit_records FOR EACH ROW EXECUTE FUNCTION {p}refuse_reads()"
        )
    else:
        await backend.execute("DROP TRIGGER refuse_reads ON {p}audit_records")


async def test_log_admin_reads_false_records_no_reads(tmp_path: Path, backend: Backend, start_gateway) -> None:
    assert Settings().audit.log_admin_reads is True  # on unless turned off
    settings = audit_settings(tmp_path, backend)
    settings = settings.model_copy(update={"audit": settings.audit.model_copy(update={"log_admin_reads": False})})
    server, base = await start_gateway(settings, stages=flagging_stages)
    gateway = server.app[GATEWAY]
    async with aiohttp.ClientSession() as session:
        plain, flagged, item = await flagged_trail(session, base, gateway.audit)
        for path, _ in read_routes(plain, flagged, item):
            status, _, headers = await read(session, base + path)
            assert status == 200 and "X-Imagegate-Audit-Id" not in headers, path
    assert await row_count(backend) == 2
    assert await admin_reads(gateway.audit) == []
    assert (await gateway.audit.verify()).ok
