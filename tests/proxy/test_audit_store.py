"""The SQLite audit store: durable group commit, queries, and no acknowledgement without durability."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from proxy.stores.audit import AuditQuery, AuditWriteError, SqliteAuditStore


def record(i: int, tenant: str = "acme") -> dict:
    return {"id": f"aud_{i:06d}", "time": time.time(), "tenant": tenant, "model": "demo", "outcome": "allow", "status": 200}


async def test_concurrent_appends_are_grouped_and_all_durable(tmp_path: Path) -> None:
    store = SqliteAuditStore(tmp_path / "audit.sqlite3", max_batch=64)
    await store.start()
    seqs = await asyncio.gather(*(store.append(record(i)) for i in range(500)))
    await store.close()
    assert sorted(seqs) == list(range(1, 501))
    # Read back with a fresh connection: what was acknowledged is on disk.
    rows = sqlite3.connect(tmp_path / "audit.sqlite3").execute("SELECT count(*) FROM audit_records").fetchone()
    assert rows == (500,)


async def test_query_filters_and_cursor(tmp_path: Path) -> None:
    store = SqliteAuditStore(tmp_path / "audit.sqlite3")
    await store.start()
    for i in range(10):
        await store.append(record(i, "acme" if i % 2 else "globex"))
    first = await store.query(AuditQuery(tenant="acme", limit=3))
    assert [r["id"] for r in first] == ["aud_000001", "aud_000003", "aud_000005"]
    rest = await store.query(AuditQuery(tenant="acme", after_seq=first[-1]["seq"]))
    assert [r["id"] for r in rest] == ["aud_000007", "aud_000009"]
    assert (await store.get("aud_000004"))["tenant"] == "globex"
    assert await store.get("aud_missing") is None
    await store.close()


async def test_a_failed_transaction_acknowledges_nobody(tmp_path: Path) -> None:
    store = SqliteAuditStore(tmp_path / "audit.sqlite3")
    await store.start()
    await store.append(record(1))
    with pytest.raises(AuditWriteError):
        await store.append(record(1))  # duplicate id violates the unique constraint
    assert len(await store.query(AuditQuery())) == 1
    await store.close()
    with pytest.raises(AuditWriteError):
        await store.append(record(2))


async def test_one_bad_record_does_not_fail_its_batch(tmp_path: Path) -> None:
    store = SqliteAuditStore(tmp_path / "audit.sqlite3", max_batch=64)
    await store.start()
    await store.append(record(0))
    results = await asyncio.gather(*(store.append(record(i)) for i in range(0, 20)), return_exceptions=True)
    await store.close()
    failures = [r for r in results if isinstance(r, Exception)]
    assert len(failures) == 1 and isinstance(failures[0], AuditWriteError)  # only the duplicate aud_000000
    assert sum(isinstance(r, int) for r in results) == 19
