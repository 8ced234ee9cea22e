"""Retention on both stores: exactly the fields and records the policy names are redacted or
deleted, legal holds are honoured, stored images go with their field, and the chain still verifies
(also after the deleted prefix is compacted behind a signed anchor)."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from policies.retention import LegalHold, RetentionPolicy, RetentionRule, plan
from proxy.cli import main
from proxy.stores.audit import AuditQuery, ReviewQuery
from proxy.stores.audit_chain import is_redacted
from proxy.stores.assets import LocalAssetStore
from proxy.stores.audit_retention import purge
from tests.proxy.audit_backends import Backend, backend, new_signer  # noqa: F401  (fixture)

DAY = 86400.0
NOW = 1_800_000_000.0


def policy(**overrides: object) -> RetentionPolicy:
    data = {
        "default": {"redact_after_days": {"prompt": 30, "negative_prompt": 30, "retained_images": 90}, "delete_after_days": 400},
        "tenants": {"globex": {"redact_after_days": {"prompt": 7, "client_address": 1}, "delete_after_days": 180}},
        "legal_holds": [{"tenant": "acme", "end_user": "suspect", "reason": "case 42"}],
    }
    data.update(overrides)
    return RetentionPolicy.model_validate(data)


def decide(tenant: str, age_days: float, fields: tuple[str, ...] = ("prompt", "model"), user: str | None = None):
    return plan(tenant=tenant, end_user=user, created=NOW - age_days * DAY, fields=fields, now=NOW, policy=policy())


def test_plan_is_per_tenant_and_per_field() -> None:
    assert decide("acme", 29).nothing
    assert decide("acme", 31).redact == ("prompt",)
    assert decide("acme", 95, ("prompt", "retained_images", "model")).redact == ("prompt", "retained_images")
    assert decide("acme", 400).delete and decide("acme", 400).redact == ()
    assert decide("globex", 8, ("prompt", "client_address")).redact == ("client_address", "prompt")
    assert decide("globex", 181).delete
    assert decide("initech", 31).redact == ("prompt",)  # no override: the default


def test_legal_holds_suspend_everything_until_they_end() -> None:
    held = decide("acme", 500, user="suspect")
    assert held.nothing and held.held == "case 42"
    assert decide("acme", 500, user="someone-else").delete
    whole_tenant = policy(legal_holds=[{"tenant": "acme", "reason": "audit"}])
    assert plan(tenant="acme", end_user="x", created=NOW - 500 * DAY, fields=(), now=NOW, policy=whole_tenant).held == "audit"
    expired = LegalHold(tenant="acme", reason="old", until=datetime.fromtimestamp(NOW, tz=timezone.utc) - timedelta(days=1))
    assert not expired.covers("acme", None, NOW)


def test_identity_fields_cannot_be_redacted() -> None:
    with pytest.raises(ValueError, match="identifies the record"):
        RetentionRule(redact_after_days={"tenant": 3})


def rec(i: int, age_days: float, tenant: str = "acme", user: str = "u-1", **extra: object) -> dict:
    return {
        "id": f"aud_{i:04d}",
        "time": NOW - age_days * DAY,
        "tenant": tenant,
        "end_user": user,
        "model": "demo",
        "outcome": "allow",
        "status": 200,
        "prompt": f"prompt {i}",
        "prompt_sha256": f"{i:064x}",
        "client_address": "10.0.0.1",
        **extra,
    }


async def test_purge_redacts_and_deletes_exactly_what_the_policy_says(backend: Backend, tmp_path: Path) -> None:
    assets = tmp_path / "assets"
    assets.mkdir()
    (assets / ("a" * 32 + ".png")).write_bytes(b"\x89PNG flagged")
    signer = new_signer()
    store = backend.store(signer=signer)
    await store.start()
    retained = [{"index": 0, "asset": "a" * 32 + ".png", "media_type": "image/png", "sha256": "b" * 64,
                 "verdicts": [{"stage": "output_classifier", "action": "flag"}], "review_item": "rev_1"}]  # fmt: skip
    records = [
        rec(1, 500), rec(2, 450), rec(3, 500, user="suspect"),  # deleted, deleted, held
        rec(4, 200, tenant="globex"),  # globex deletes after 180 days
        rec(5, 100, retained_images=retained),  # prompt and stored image redacted
        rec(6, 40), rec(7, 10),  # prompt redacted; untouched
        rec(8, 8, tenant="globex"),  # globex: prompt after 7 days, client address after 1
    ]
    for record in records:
        await store.append(record)
    assert [i["id"] for i in await store.review_items(ReviewQuery())] == ["rev_1"]

    dry = await purge(store, policy(), assets=LocalAssetStore(assets, b"k" * 32), signer=signer, now=NOW, dry_run=True)
    assert dry.deleted == 3 and dry.held == 1 and dry.redacted == {"prompt": 3, "retained_images": 1, "client_address": 1}
    assert (await store.get("aud_0001"))["prompt"] == "prompt 1"  # a dry run changes nothing
    assert (assets / ("a" * 32 + ".png")).exists()

    report = await purge(store, policy(), assets=LocalAssetStore(assets, b"k" * 32), signer=signer, now=NOW)
    assert report.to_dict() | {"compacted": None} == {
        "dry_run": False, "examined": 8, "redacted": {"prompt": 3, "retained_images": 1, "client_address": 1},
        "deleted": 3, "held": 1, "compacted": None, "images_removed": 1,
    }  # fmt: skip
    assert report.compacted == 2  # seq 1 and 2 were a deleted prefix; seq 3 is held
    assert await store.get("aud_0001") is None and await store.get("aud_0002") is None
    deleted = await store.get("aud_0004")
    assert deleted["deleted"] is True and "prompt" not in deleted
    held = await store.get("aud_0003")
    assert held["prompt"] == "prompt 3" and held["client_address"] == "10.0.0.1"
    five = await store.get("aud_0005")
    assert is_redacted(five["prompt"]) and is_redacted(five["retained_images"])
    assert five["prompt_sha256"] == f"{5:064x}" and five["client_address"] == "10.0.0.1"
    assert not (assets / ("a" * 32 + ".png")).exists()
    assert (await store.review_item("rev_1"))["asset"] is None
    six, seven, eight = [await store.get(f"aud_000{i}") for i in (6, 7, 8)]
    assert is_redacted(six["prompt"]) and not is_redacted(six["client_address"])
    assert seven["prompt"] == "prompt 7"
    assert is_redacted(eight["prompt"]) and is_redacted(eight["client_address"]) and eight["end_user"] == "u-1"
    assert five["prompt"]["$redacted"]["rule"] == "prompt after 30 days"
    live = [r["id"] for r in await store.query(AuditQuery())]
    assert live[:5] == ["aud_0003", "aud_0005", "aud_0006", "aud_0007", "aud_0008"]
    assert (await store.query(AuditQuery(outcome="retention")))[0]["retention"]["deleted"] == 3  # the purge is audited

    verified = await store.verify(trusted_keys=[signer.public_hex])
    assert verified.ok, verified.to_dict()
    assert verified.tombstones == 1 and verified.redacted_fields == 5 and verified.first_seq == 3
    await store.append(rec(9, 0))  # the chain goes on after compaction
    assert (await store.verify(trusted_keys=[signer.public_hex])).ok

    again = await purge(store, policy(), assets=LocalAssetStore(assets, b"k" * 32), signer=signer, now=NOW)
    assert not again.changed and again.held == 1  # idempotent
    await store.close()


async def test_a_compacted_log_still_detects_tampering_with_its_anchor(backend: Backend) -> None:
    signer = new_signer()
    store = backend.store(signer=signer)
    await store.start()
    for i in range(1, 6):
        await store.append(rec(i, 500 if i <= 3 else 1))
    await purge(store, policy(), signer=signer, now=NOW)
    assert (await store.verify(trusted_keys=[signer.public_hex])).ok
    await store.close()
    await backend.execute("UPDATE {p}audit_anchor SET hash = $1", "e" * 64)
    store = backend.store()
    await store.start()
    report = await store.verify(trusted_keys=[signer.public_hex])
    await store.close()
    assert not report.ok and report.first_break.seq == 4 and any("anchor" in p for p in report.problems)


async def test_cli_purge_dry_run_and_background_task(backend: Backend, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from proxy.app import create_app
    from tests.conftest import make_settings

    audit = {**backend.audit_settings(), "purge_interval_s": 0.2}
    if backend.name == "sqlite":
        audit["sqlite_path"] = str(tmp_path / "audit.sqlite3")
    settings = make_settings(tmp_path, audit=audit)
    from proxy.stores.audit import open_audit_store

    store = open_audit_store(settings)
    backend.stores.append(store)
    await store.start()
    now = time.time()
    await store.append({**rec(1, 0), "time": now - 500 * DAY})
    await store.append({**rec(2, 0), "time": now - 40 * DAY})
    await store.close()

    config = tmp_path / "imagegate.yaml"
    config.write_text(yaml.safe_dump(json.loads(settings.model_dump_json(exclude={"tenants"}))))
    assert await asyncio.to_thread(main, ["audit", "purge", "--dry-run", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "would delete: aud_0001" in out and "would redact prompt: aud_0002" in out

    # The app's background task applies the same policy.
    app = create_app(settings)
    from aiohttp.test_utils import TestServer

    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        from proxy.app import GATEWAY

        gateway = app[GATEWAY]
        # Up to 30 s for the first purge pass (interval 0.2 s): generous, because a loaded CI
        # machine can delay a background task by seconds; the test waits only as long as it takes.
        for _ in range(300):
            if (await gateway.audit.get("aud_0001") or {}).get("deleted") or await gateway.audit.get("aud_0001") is None:
                break
            await asyncio.sleep(0.1)
        assert is_redacted((await gateway.audit.get("aud_0002"))["prompt"])
        assert (await gateway.audit.verify()).ok
    finally:
        await server.close()
