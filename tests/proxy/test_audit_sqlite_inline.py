"""The SQLite store's fast path: an append that finds the writer idle commits on the event loop.

It must stay exactly as durable and as chained as the writer thread's path, and it must never make
the event loop wait: a database locked by another connection, or a disk that has turned slow, sends
records to the writer thread instead.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

from proxy.stores.audit import SqliteAuditStore  # first: it imports audit_sqlite in order
from proxy.stores import audit_sqlite  # isort: skip


#: For tests that count inline commits: a limit no commit reaches, so an fsync stalled by a busy
#: machine (3 of the last 50 over the limit pause the fast path) cannot change the count.
NO_LIMIT_MS = 60_000.0


def record(i: int) -> dict:
    return {"id": f"aud_{i:06d}", "time": time.time(), "tenant": "acme", "model": "demo", "outcome": "allow", "status": 200}


async def test_sequential_appends_commit_inline_durably_and_chained(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    store = SqliteAuditStore(path, inline_commit_max_ms=NO_LIMIT_MS)
    await store.start()
    seqs = [await store.append(record(i)) for i in range(30)]
    assert store.inline_commits == 30 and seqs == list(range(1, 31))
    assert (await store.verify()).ok
    await store.close()
    # A fresh connection reads what each acknowledged append wrote.
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT count(*) FROM audit_records").fetchone() == (30,)


async def test_concurrent_appends_still_group_commit_on_the_thread(tmp_path: Path) -> None:
    store = SqliteAuditStore(tmp_path / "audit.sqlite3", inline_commit_max_ms=50.0)
    await store.start()
    seqs = await asyncio.gather(*(store.append(record(i)) for i in range(200)))
    report = await store.verify()
    await store.close()
    assert sorted(seqs) == list(range(1, 201)) and report.ok
    # Only an append that found nothing queued could go inline; the rest queued behind it.
    assert store.inline_commits < 200


async def test_callers_that_append_again_right_away_keep_group_commit(tmp_path: Path) -> None:
    """Request handlers: each appends, then the loop serves others, then it appends again.

    When a group commit finishes, every caller it acknowledged is about to append again. If the first
    of them committed inline, the next would find the writer idle as well, and the store would fall
    back to one fsync per record for as long as the load lasts.
    """
    store = SqliteAuditStore(tmp_path / "audit.sqlite3", inline_commit_max_ms=50.0)
    await store.start()
    counter = iter(range(10**6))

    async def handler() -> None:
        for _ in range(25):
            await store.append(record(next(counter)))
            await asyncio.sleep(0)  # the handler sends its response; other tasks run

    await asyncio.gather(*(handler() for _ in range(16)))
    report = await store.verify()
    await store.close()
    assert report.ok and report.records == 400
    # Only the handlers' first appends, before any was queued, can find everything idle.
    assert store.inline_commits <= 16


async def test_a_locked_database_never_blocks_the_event_loop(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    store = SqliteAuditStore(path, inline_commit_max_ms=50.0)
    await store.start()
    await store.append(record(0))
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    pending = asyncio.ensure_future(store.append(record(1)))
    ticks = 0
    for _ in range(10):  # the loop keeps running while the record waits for the lock
        await asyncio.sleep(0.01)
        ticks += 1
    assert ticks == 10 and not pending.done()
    other.execute("COMMIT")
    other.close()
    assert await asyncio.wait_for(pending, 15) == 2
    assert store.inline_commits == 1  # the second record went through the writer thread
    assert (await store.verify()).ok
    await store.close()


async def test_slow_commits_turn_the_fast_path_off(tmp_path: Path) -> None:
    # A limit no real commit meets: every inline commit counts as slow.
    store = SqliteAuditStore(tmp_path / "audit.sqlite3", inline_commit_max_ms=0.000001)
    await store.start()
    for i in range(10):
        await store.append(record(i))
    assert store.inline_commits == audit_sqlite.INLINE_SLOW_LIMIT  # then the thread took over
    assert (await store.verify()).ok
    await store.close()


async def test_zero_limit_disables_the_fast_path(tmp_path: Path) -> None:
    store = SqliteAuditStore(tmp_path / "audit.sqlite3", inline_commit_max_ms=0)
    await store.start()
    for i in range(5):
        await store.append(record(i))
    assert store.inline_commits == 0
    await store.close()


async def test_the_writer_thread_checkpoints_the_wal_of_inline_commits(tmp_path: Path) -> None:
    store = SqliteAuditStore(tmp_path / "audit.sqlite3", inline_commit_max_ms=NO_LIMIT_MS)
    await store.start()
    for i in range(audit_sqlite.WAL_CHECKPOINT_COMMITS + 20):
        await store.append(record(i))
    assert store.inline_commits > audit_sqlite.WAL_CHECKPOINT_COMMITS
    deadline = time.monotonic() + 10
    while store._commits_since_wal_checkpoint >= audit_sqlite.WAL_CHECKPOINT_COMMITS:
        assert time.monotonic() < deadline, "the writer thread never checkpointed the WAL"
        await asyncio.sleep(0.01)
    with sqlite3.connect(tmp_path / "audit.sqlite3") as connection:
        assert connection.execute("PRAGMA wal_autocheckpoint").fetchone() == (1000,)  # only the writer's is off
    await store.close()
