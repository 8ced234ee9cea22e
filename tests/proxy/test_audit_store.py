"""The audit stores (SQLite and PostgreSQL, same suite): durable group commit, queries, and no
acknowledgement without durability."""

from __future__ import annotations

import asyncio
import time

import pytest

from proxy.stores.audit import AuditQuery, AuditWriteError
from tests.proxy.audit_backends import Backend, backend  # noqa: F401  (fixture)


def record(i: int, tenant: str = "acme", **extra: object) -> dict:
    return {"id": f"aud_{i:06d}", "time": time.time(), "tenant": tenant, "model": "demo", "outcome": "allow", "status": 200, **extra}


async def test_concurrent_appends_are_grouped_and_all_durable(backend: Backend) -> None:
    store = backend.store(max_batch=64)
    await store.start()
    seqs = await asyncio.gather(*(store.append(record(i)) for i in range(500)))
    await store.close()
    assert sorted(seqs) == list(range(1, 501))
    # Read back with a fresh connection: what was acknowledged is on disk.
    assert await backend.execute("SELECT count(*) FROM {p}audit_records") == [(500,)]


async def test_query_filters_and_cursor(backend: Backend) -> None:
    store = backend.store()
    await store.start()
    for i in range(10):
        await store.append(record(i, "acme" if i % 2 else "globex"))
    first = await store.query(AuditQuery(tenant="acme", limit=3))
    assert [r["id"] for r in first] == ["aud_000001", "aud_000003", "aud_000005"]
    rest = await store.query(AuditQuery(tenant="acme", after_seq=first[-1]["seq"]))
    assert [r["id"] for r in rest] == ["aud_000007", "aud_000009"]
    newest = await store.query(AuditQuery(tenant="acme", order="desc", limit=2))
    assert [r["id"] for r in newest] == ["aud_000009", "aud_000007"]
    older = await store.query(AuditQuery(tenant="acme", order="desc", before_seq=newest[-1]["seq"]))
    assert [r["id"] for r in older] == ["aud_000005", "aud_000003", "aud_000001"]
    assert (await store.get("aud_000004"))["tenant"] == "globex"
    assert await store.get("aud_missing") is None
    await store.close()


async def test_query_by_time_decision_and_category(backend: Backend) -> None:
    store = backend.store()
    await store.start()
    base = 1_700_000_000.0
    flagged = [{"stage": "output_classifier", "action": "flag", "category": "violence", "image_index": 0}]
    await store.append({**record(1), "time": base, "decisions": [{"stage": "authenticate", "action": "allow"}]})
    await store.append({**record(2), "time": base + 10, "decisions": flagged, "end_user": "u-1"})
    await store.append(
        {**record(3), "time": base + 20, "model": "other", "images": [{"index": 0, "verdict": {"action": "blur", "category": "sexual"}}]}
    )
    ids = lambda rows: [r["id"] for r in rows]  # noqa: E731
    assert ids(await store.query(AuditQuery(since=base + 5, until=base + 20))) == ["aud_000002"]
    assert ids(await store.query(AuditQuery(decision="flag"))) == ["aud_000002"]
    assert ids(await store.query(AuditQuery(category="sexual"))) == ["aud_000003"]
    assert ids(await store.query(AuditQuery(decision="allow"))) == ["aud_000001"]
    assert ids(await store.query(AuditQuery(model="other"))) == ["aud_000003"]
    assert ids(await store.query(AuditQuery(end_user="u-1"))) == ["aud_000002"]
    assert ids(await store.query(AuditQuery(category="viol"))) == []  # whole words only
    await store.close()


async def test_a_failed_transaction_acknowledges_nobody(backend: Backend) -> None:
    store = backend.store()
    await store.start()
    await store.append(record(1))
    with pytest.raises(AuditWriteError):
        await store.append(record(1))  # duplicate id violates the unique constraint
    assert len(await store.query(AuditQuery())) == 1
    await store.append(record(2))  # the chain head did not move for the failed record
    assert [r["seq"] for r in await store.query(AuditQuery())] == [1, 2]
    assert (await store.verify()).ok
    await store.close()
    with pytest.raises(AuditWriteError):
        await store.append(record(3))


async def test_one_bad_record_does_not_fail_its_batch(backend: Backend) -> None:
    store = backend.store(max_batch=64)
    await store.start()
    await store.append(record(0))
    results = await asyncio.gather(*(store.append(record(i)) for i in range(0, 20)), return_exceptions=True)
    report = await store.verify()
    await store.close()
    failures = [r for r in results if isinstance(r, Exception)]
    assert len(failures) == 1 and isinstance(failures[0], AuditWriteError)  # only the duplicate aud_000000
    assert sum(isinstance(r, int) for r in results) == 19
    assert report.ok and report.records == 20


async def test_unserialisable_or_incomplete_records_are_refused(backend: Backend) -> None:
    store = backend.store()
    await store.start()
    with pytest.raises(AuditWriteError):
        await store.append({"time": time.time()})  # no id
    assert await store.ping()
    await store.close()
    assert not await store.ping()


async def test_two_writers_sharing_one_database_keep_one_chain(backend: Backend) -> None:
    """Two replicas (two store instances, two writers) append concurrently: one valid chain."""
    first, second = backend.store(max_batch=16), backend.store(max_batch=16)
    await first.start()
    await second.start()
    await asyncio.gather(
        *(first.append(record(i)) for i in range(0, 300)), *(second.append(record(i)) for i in range(300, 600))
    )
    report = await first.verify()
    await first.close()
    await second.close()
    assert report.ok, report.to_dict()
    assert report.records == 600 and report.last_seq == 600
