"""Tamper evidence on both stores: altering, deleting, reordering or truncating records, or
rewriting the chain, is detected by verify (and by `imagegate audit verify`), which names the first
record that breaks the chain; redacted fields and tombstones still verify."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from proxy.cli import main
from proxy.stores.audit_chain import (
    GENESIS,
    ChainRow,
    canonical,
    chain_hash,
    field_digest,
    prepare,
    redaction_marker,
    verify_chain,
)
from tests.proxy.audit_backends import Backend, backend, new_signer  # noqa: F401  (fixture)


def record(i: int) -> dict:
    return {
        "id": f"aud_{i:06d}",
        "time": 1_700_000_000.0 + i,
        "tenant": "acme",
        "model": "demo",
        "outcome": "allow",
        "status": 200,
        "prompt": f"a red bicycle number {i} — ünïcode",
        "decisions": [{"stage": "prompt_filter", "action": "allow", "score": 0.01 * i}],
        "cost_estimate_usd": 0.04,
        "n": 1,
        "released": True,
        "licence": None,
    }


def test_prepared_body_is_canonical_and_digests_commit_to_each_field() -> None:
    prepared = prepare(record(3))
    assert prepared.body == canonical(record(3))
    digests = json.loads(prepared.digests_json)
    assert canonical(digests) == prepared.digests_json
    assert digests["prompt"] == field_digest("prompt", canonical(record(3)["prompt"]))


def _rows(records: list[dict]) -> list[ChainRow]:
    rows, prev = [], GENESIS
    for seq, rec in enumerate(records, start=1):
        prepared = prepare(rec)
        hash_ = chain_hash(seq, prev, prepared.digests_json)
        rows.append(ChainRow(seq, rec["id"], rec["time"], prepared.body, prepared.digests_json, prev, hash_))
        prev = hash_
    return rows


def test_redacted_field_still_verifies_but_an_altered_one_does_not() -> None:
    rows = _rows([record(i) for i in range(1, 6)])
    body = json.loads(rows[2].body)
    body["prompt"] = redaction_marker("prompt after 30 days", time.time())
    redacted = ChainRow(*[*vars_of(rows[2])[:3], canonical(body), *vars_of(rows[2])[4:]])
    report = verify_chain([*rows[:2], redacted, *rows[3:]])
    assert report.ok and report.redacted_fields == 1
    body["prompt"] = "something else"
    altered = ChainRow(*[*vars_of(rows[2])[:3], canonical(body), *vars_of(rows[2])[4:]])
    report = verify_chain([*rows[:2], altered, *rows[3:]])
    assert not report.ok and report.first_break.seq == 3 and "prompt" in report.first_break.reason


async def cli(argv: list[str]) -> int:
    """The CLI runs its own event loop: call it from a worker thread."""
    import asyncio

    return await asyncio.to_thread(main, argv)


def vars_of(row: ChainRow) -> list:
    return [row.seq, row.id, row.ts, row.body, row.digests, row.prev_hash, row.hash]


async def _filled(backend: Backend, count: int = 20) -> None:
    store = backend.store(signer=new_signer(), checkpoint_every=5)
    await store.start()
    for i in range(1, count + 1):
        await store.append(record(i))
    report = await store.verify()
    await store.close()
    assert report.ok and report.records == count and report.checkpoints == count // 5


async def _verify(backend: Backend):
    store = backend.store()
    await store.start()
    try:
        return await store.verify()
    finally:
        await store.close()


async def test_altered_field_is_detected(backend: Backend) -> None:
    await _filled(backend)
    await backend.execute("UPDATE {p}audit_records SET record = replace(record, 'number 7 ', 'number 8 ') WHERE seq = 7")
    report = await _verify(backend)
    assert report.first_break.seq == 7 and report.first_break.id == "aud_000007"
    assert "prompt" in report.first_break.reason


async def test_altered_index_column_is_detected(backend: Backend) -> None:
    await _filled(backend)
    await backend.execute("UPDATE {p}audit_records SET id = 'aud_forged' WHERE seq = 4")
    report = await _verify(backend)
    assert report.first_break.seq == 4


async def test_deleted_record_is_detected(backend: Backend) -> None:
    await _filled(backend)
    await backend.execute("DELETE FROM {p}audit_records WHERE seq = 9")
    report = await _verify(backend)
    assert report.first_break.seq == 10 and "expected seq 9" in report.first_break.reason


async def test_reordered_records_are_detected(backend: Backend) -> None:
    await _filled(backend)
    # Swap the content of seq 11 and 12 (ids, bodies, digests and hashes), keeping the seq numbers.
    await backend.execute("UPDATE {p}audit_records SET seq = -11 WHERE seq = 11")
    await backend.execute("UPDATE {p}audit_records SET seq = 11 WHERE seq = 12")
    await backend.execute("UPDATE {p}audit_records SET seq = 12 WHERE seq = -11")
    report = await _verify(backend)
    assert report.first_break.seq == 11 and report.first_break.id == "aud_000012"


async def test_truncated_tail_is_detected_by_the_signed_checkpoint(backend: Backend) -> None:
    await _filled(backend)
    await backend.execute("DELETE FROM {p}audit_records WHERE seq > 17")
    report = await _verify(backend)
    assert report.first_break.seq == 18 and "checkpoint" in report.first_break.reason


async def test_rewritten_chain_is_detected_by_the_signed_checkpoint(backend: Backend) -> None:
    """Someone alters seq 7 and recomputes every hash after it: the chain links, the checkpoints don't."""
    await _filled(backend)
    rows = await backend.execute("SELECT seq, record FROM {p}audit_records ORDER BY seq")
    prev = (await backend.execute("SELECT hash FROM {p}audit_records WHERE seq = 6"))[0][0]
    for seq, body in rows[6:]:
        rec = json.loads(body)
        if seq == 7:
            rec["prompt"] = "nothing to see here"
        prepared = prepare(rec)
        hash_ = chain_hash(seq, prev, prepared.digests_json)
        await backend.execute(
            "UPDATE {p}audit_records SET record = $1, digests = $2, prev_hash = $3, hash = $4 WHERE seq = $5",
            prepared.body, prepared.digests_json, prev, hash_, seq,
        )  # fmt: skip
        prev = hash_
    report = await _verify(backend)
    assert report.first_break is None and not report.ok
    assert any("seq 10" in problem and "rewritten" in problem for problem in report.problems)


async def test_forged_checkpoint_signature_is_detected(backend: Backend) -> None:
    await _filled(backend)
    await backend.execute("UPDATE {p}audit_checkpoints SET hash = $1 WHERE seq = 10", "f" * 64)
    report = await _verify(backend)
    assert any("seq 10" in problem and "bad signature" in problem for problem in report.problems)


async def test_cli_verify_names_the_first_broken_record(backend: Backend, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "imagegate.yaml"
    data_dir = tmp_path / "data"
    audit = {**backend.audit_settings(), "checkpoint_every": 5}
    if backend.name == "sqlite":
        audit["sqlite_path"] = str(tmp_path / "audit.sqlite3")
    config.write_text(yaml.safe_dump({"server": {"data_dir": str(data_dir)}, "audit": audit}))
    # Write through the configured store, so the checkpoints are signed by the configured key.
    from proxy.settings import load_settings
    from proxy.stores.audit import open_audit_store

    store = open_audit_store(load_settings(config))
    backend.stores.append(store)
    await store.start()
    for i in range(1, 13):
        await store.append(record(i))
    await store.close()
    assert (data_dir / "audit-checkpoint.key").stat().st_mode & 0o777 == 0o600

    assert await cli(["audit", "verify", "--config", str(config)]) == 0
    assert "OK: the chain verifies" in capsys.readouterr().out
    await backend.execute("UPDATE {p}audit_records SET record = replace(record, '\"demo\"', '\"other\"') WHERE seq = 5")
    assert await cli(["audit", "verify", "--config", str(config)]) == 1
    out = capsys.readouterr().out
    assert "BROKEN: first break at record seq=5 id=aud_000005: field 'model' was altered" in out
    assert await cli(["audit", "verify", "--config", str(config), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["first_break"].startswith("record seq=5")
    # A checkpoint key nobody configured is not trusted.
    (data_dir / "audit-checkpoint.key").rename(data_dir / "old.key")
    await backend.execute("UPDATE {p}audit_records SET record = replace(record, '\"other\"', '\"demo\"') WHERE seq = 5")
    store = open_audit_store(load_settings(config))  # creates a new key: the old checkpoints are now untrusted
    backend.stores.append(store)
    await store.start()
    await store.close()
    assert await cli(["audit", "verify", "--config", str(config)]) == 1
    assert "untrusted key" in capsys.readouterr().out
    assert await cli(["audit", "verify", "--config", str(config), "--trust-key", str(data_dir / "old.key")]) == 0
