"""`SqliteAuditStore`: the embedded default, SQLite in WAL mode with `synchronous=FULL`.

All writes run on one dedicated writer thread, one `BEGIN IMMEDIATE` transaction per batch; the
chain head is read inside that transaction, so even two processes sharing the file extend one chain.
Reads run on a second thread with their own connection (WAL readers never block the writer).

The writer thread takes records straight from `append` through a queue and resolves each caller's
future itself (`call_soon_threadsafe`), so an acknowledged record costs one hand-off each way plus
the fsync: no writer task to wake on the event loop and no executor future chained onto another. At
concurrency 1 that hand-off is what the client waits for on top of the disk (bench/bench_audit.py).

Fast path when idle (`inline_commit_max_ms`): a record that finds the store idle is committed on
the calling thread, the event loop, at once. On a VM two thread wake-ups (loop to writer, writer to
loop) cost more than the commit's fsync when the CPUs are otherwise idle (about 0.2 ms each here
against 0.1 ms), so this is what keeps the audit write cheap at low load. "Idle" means: nothing
queued, no transaction running, no other append waiting for its commit, and no other append arriving
in the same turn of the event loop (the append yields once before it decides, and appends that came
meanwhile all go to the thread together). Without those last two, load made it worse than useless:
callers whose group commit just finished append again one after the other, the first commits
inline while blocking the loop, the next then finds the writer idle too, and so on: one fsync per
record, on the loop (5,000-9,000 records/s at 16-128 concurrent appenders here, against 20,000-40,000
group-committed). It never waits: the database lock is tried with no
busy timeout and a busy database sends the record to the writer thread; the WAL is never checkpointed
inline (automatic checkpoints are off; the writer thread checkpoints every `WAL_CHECKPOINT_COMMITS`
commits); and inline commits slower than the limit (3 of the last 50: a slow or saturated disk, not
one outlier) turn the fast path off for `INLINE_PAUSE_S` seconds, logged. Under load, records queue
behind a running transaction and are group-committed by the thread.
"""

from __future__ import annotations

import asyncio
import collections
import json
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import structlog

from .audit import (
    AuditQuery,
    AuditWriteError,
    GroupCommitStore,
    ReviewConflict,
    ReviewQuery,
    prepare_checked,
    review_decision,
    review_rows,
)
from .audit_chain import (
    GENESIS,
    TOMBSTONE,
    Anchor,
    ChainRow,
    Checkpoint,
    CheckpointSigner,
    PreparedRecord,
    canonical,
    chain_hash,
    is_redacted,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_records (
    seq        INTEGER PRIMARY KEY,
    id         TEXT NOT NULL UNIQUE,
    ts         REAL NOT NULL,
    tenant     TEXT,
    end_user   TEXT,
    model      TEXT,
    outcome    TEXT,
    status     INTEGER,
    actions    TEXT,
    categories TEXT,
    record     TEXT NOT NULL,
    digests    TEXT,
    prev_hash  TEXT NOT NULL,
    hash       TEXT NOT NULL,
    deleted_at REAL
);
CREATE INDEX IF NOT EXISTS audit_records_tenant_ts ON audit_records (tenant, ts);
CREATE INDEX IF NOT EXISTS audit_records_ts ON audit_records (ts);
CREATE TABLE IF NOT EXISTS audit_checkpoints (
    seq        INTEGER PRIMARY KEY,
    hash       TEXT NOT NULL,
    at         REAL NOT NULL,
    key_id     TEXT NOT NULL,
    public_key TEXT NOT NULL,
    signature  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_anchor (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    seq        INTEGER NOT NULL,
    hash       TEXT NOT NULL,
    at         REAL NOT NULL,
    key_id     TEXT NOT NULL,
    public_key TEXT NOT NULL,
    signature  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS review_items (
    id                TEXT PRIMARY KEY,
    audit_id          TEXT NOT NULL,
    tenant            TEXT,
    end_user          TEXT,
    model             TEXT,
    created           REAL NOT NULL,
    image_index       INTEGER,
    asset             TEXT,
    media_type        TEXT,
    sha256            TEXT,
    verdicts          TEXT,
    status            TEXT NOT NULL DEFAULT 'pending',
    reviewer          TEXT,
    decided_at        REAL,
    note              TEXT,
    decision_audit_id TEXT
);
CREATE INDEX IF NOT EXISTS review_items_tenant_status ON review_items (tenant, status, created);
CREATE INDEX IF NOT EXISTS review_items_audit_id ON review_items (audit_id);
"""

_INSERT = (
    "INSERT INTO audit_records (seq, id, ts, tenant, end_user, model, outcome, status, actions, categories,"
    " record, digests, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_REVIEW_COLUMNS = (
    "id, audit_id, tenant, end_user, model, created, image_index, asset, media_type, sha256, verdicts,"
    " status, reviewer, decided_at, note, decision_audit_id"
)


BUSY_TIMEOUT_MS = 10000


def _connect(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    return connection


def _text(value: Any) -> str | None:
    """Index columns hold text; a redaction marker or other structure is not indexed."""
    return value if isinstance(value, str) or value is None else None


def _review_dict(row: Sequence[Any]) -> dict[str, Any]:
    names = [name.strip() for name in _REVIEW_COLUMNS.split(",")]
    item = dict(zip(names, row, strict=True))
    item["verdicts"] = json.loads(item["verdicts"] or "[]")
    return item


log = structlog.get_logger("imagegate.audit")

#: The writer thread runs a PASSIVE WAL checkpoint after this many commits (automatic checkpoints,
#: which would run inside whichever commit crosses the threshold, inline ones included, are off).
WAL_CHECKPOINT_COMMITS = 100
#: The inline fast path turns off for INLINE_PAUSE_S when INLINE_SLOW_LIMIT of the last
#: INLINE_WINDOW inline commits were slower than their limit.
INLINE_PAUSE_S = 30.0
INLINE_SLOW_LIMIT = 3
INLINE_WINDOW = 50


class _Busy(Exception):
    """The inline fast path found the database locked by another connection: use the thread."""


def _write_failure(exc: Exception) -> AuditWriteError:
    """A failed single-record commit, logged, as the error its caller sees (either write path)."""
    log.error("audit_write_failed", error=type(exc).__name__, detail=str(exc)[:500])
    return exc if isinstance(exc, AuditWriteError) else AuditWriteError(f"audit write failed: {exc}")


class _Call:
    """A function to run on the writer thread (retention, compaction, ping), in queue order."""

    __slots__ = ("args", "function", "future")

    def __init__(self, function: Callable[..., Any], args: tuple[Any, ...], future: asyncio.Future[Any]) -> None:
        self.function, self.args, self.future = function, args, future


_STOP = object()


def _resolve(future: asyncio.Future[Any], outcome: Any, failed: bool) -> None:
    if future.done():  # the caller went away (a client disconnect cancels its request task)
        return
    if failed:
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


class _WriterThread:
    """The one thread that owns the write connection: batches records, runs calls, checkpoints.

    Records arrive with the future their caller awaits; whatever queued up while the previous
    transaction was committing goes into the next one (group commit, up to `max_batch`).
    """

    def __init__(self, store: SqliteAuditStore, loop: asyncio.AbstractEventLoop) -> None:
        self.store = store
        self.loop = loop
        self.queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="audit-sqlite-writer", daemon=True)
        self.stopped: asyncio.Future[None] = loop.create_future()
        #: Held while the write connection is in use, by this thread or by an inline commit.
        self.lock = threading.Lock()
        self.wal_checkpoint_posted = False

    def start(self) -> None:
        self.thread.start()

    def call(self, function: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = self.loop.create_future()
        self.queue.put(_Call(function, args, future))
        return future

    def _settle(self, settled: list[tuple[asyncio.Future[Any], Any, bool]]) -> None:
        for future, outcome, failed in settled:
            _resolve(future, outcome, failed)

    def _post(self, settled: list[tuple[asyncio.Future[Any], Any, bool]]) -> None:
        try:
            self.loop.call_soon_threadsafe(self._settle, settled)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    def _run(self) -> None:
        store = self.store
        interval = max(0.05, store.checkpoint_interval_s)
        try:
            while True:
                try:
                    item = self.queue.get(timeout=interval)
                except queue.Empty:
                    with self.lock:
                        self._idle_checkpoint()
                        if self.store._commits_since_wal_checkpoint:
                            self.store._wal_checkpoint()
                    continue
                while item is not None:
                    with self.lock:
                        item = self._handle(item)
                        if item is _STOP:
                            self._idle_checkpoint()
                            self.store._wal_checkpoint()
                            self._close_connection()
                            return
                        if self.store._commits_since_wal_checkpoint >= WAL_CHECKPOINT_COMMITS:
                            self.store._wal_checkpoint()
        finally:
            self._post([(self.stopped, None, False)])

    def _handle(self, item: Any) -> Any:
        """Handle `item`; returns the next item already taken off the queue, if any."""
        if item is _STOP:
            return _STOP
        if isinstance(item, _Call):
            try:
                self._post([(item.future, item.function(*item.args), False)])
            except BaseException as exc:  # noqa: BLE001 (handed to the caller)
                self._post([(item.future, exc, True)])
            return None
        batch: list[Any] = [item]
        following = None
        while len(batch) < self.store.max_batch:
            try:
                following = self.queue.get_nowait()
            except queue.Empty:
                following = None
                break
            if isinstance(following, tuple):
                batch.append(following)
                following = None
            else:
                break
        self._post(self._commit(batch))
        return following

    def _commit(self, batch: list[Any]) -> list[tuple[asyncio.Future[Any], Any, bool]]:
        """Commit `batch` in one transaction; if it fails, each record alone, so that one bad record
        cannot fail the records that happened to share its transaction."""
        try:
            seqs = self.store._write_batch([prepared for prepared, _ in batch])
        except Exception as exc:
            if len(batch) > 1:
                return [settled for pending in batch for settled in self._commit([pending])]
            return [(batch[0][1], _write_failure(exc), True)]
        return [(future, seq, False) for (_, future), seq in zip(batch, seqs, strict=True)]

    def _idle_checkpoint(self) -> None:
        if self.store.signer is None or self.store._connection is None:
            return
        try:
            self.store._write_batch([], checkpoint_only=True)
        except Exception as exc:  # a missed checkpoint is retried at the next interval
            log.warning("audit_checkpoint_failed", error=type(exc).__name__, detail=str(exc)[:300])

    def _close_connection(self) -> None:
        if self.store._connection is not None:
            self.store._connection.close()
            self.store._connection = None


class SqliteAuditStore(GroupCommitStore):
    """SQLite in WAL mode with `synchronous=FULL`, one writer thread, group commit, hash chain."""

    def __init__(
        self,
        path: Path,
        *,
        max_batch: int = 256,
        signer: CheckpointSigner | None = None,
        checkpoint_every: int = 1000,
        checkpoint_interval_s: float = 60.0,
        inline_commit_max_ms: float = 5.0,
    ) -> None:
        super().__init__(
            max_batch=max_batch, signer=signer, checkpoint_every=checkpoint_every, checkpoint_interval_s=checkpoint_interval_s
        )
        self.path = Path(path)
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-sqlite-read")
        self._connection: sqlite3.Connection | None = None
        self._read_connection: sqlite3.Connection | None = None
        self.inline_commit_max_s = max(0.0, inline_commit_max_ms) / 1000.0
        self._inline_paused_until = 0.0
        self._inline_slow: collections.deque[bool] = collections.deque(maxlen=INLINE_WINDOW)
        self._commits_since_wal_checkpoint = 0
        self.inline_commits = 0  # how many records took the fast path (tests, benchmarks)
        self._waiting = 0  # appends deciding or queued whose callers have not resumed yet

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        thread = _WriterThread(self, asyncio.get_running_loop())
        thread.start()
        self._writer = thread
        try:
            await thread.call(self._open_writer)
            self._read_connection = await self._read(_connect, self.path)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        self._closing = True
        thread, self._writer = self._writer, None
        if thread is not None:
            thread.queue.put(_STOP)  # after every record already queued: those are committed first
            await thread.stopped
        if self._read_connection is not None:
            await self._read(self._read_connection.close)
            self._read_connection = None
        self._reader.shutdown(wait=True)

    async def append(self, record: dict[str, Any]) -> int:
        thread = self._writer
        if thread is None or self._closing:
            raise AuditWriteError("the audit store is not running")
        prepared = prepare_checked(record)
        if self._idle(thread):
            self._waiting += 1  # appends arriving while this one yields will queue
            try:
                await asyncio.sleep(0)  # let the appends that are ready in this turn arrive
            finally:
                self._waiting -= 1
            if self._idle(thread) and thread.lock.acquire(blocking=False):  # commit here, now
                try:
                    return self._commit_inline(thread, prepared)
                except _Busy:
                    pass  # another connection holds the database: the thread waits for it
                finally:
                    thread.lock.release()
            if self._writer is not thread or self._closing:
                raise AuditWriteError("the audit store is not running")
        future: asyncio.Future[int] = thread.loop.create_future()
        thread.queue.put((prepared, future))
        self._waiting += 1
        try:
            return await future
        finally:
            self._waiting -= 1

    def _idle(self, thread: _WriterThread) -> bool:
        """May an append commit inline now (see the module doc)?"""
        return bool(
            self.inline_commit_max_s
            and not self._waiting
            and thread.queue.empty()
            and time.monotonic() >= self._inline_paused_until
        )

    def _commit_inline(self, thread: _WriterThread, prepared: PreparedRecord) -> int:
        """Commit one record on the calling thread (the caller holds `thread.lock`)."""
        connection = self._connection
        if connection is None:
            raise _Busy()
        started = time.perf_counter()
        connection.execute("PRAGMA busy_timeout=0")
        try:
            [seq] = self._write_batch([prepared])
        except Exception as exc:
            if isinstance(exc, sqlite3.OperationalError) and ("locked" in str(exc) or "busy" in str(exc)):
                raise _Busy() from exc
            raise _write_failure(exc) from exc
        finally:
            connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            elapsed = time.perf_counter() - started
            slow = self._inline_slow
            slow.append(elapsed > self.inline_commit_max_s)
            if slow[-1] and sum(slow) >= INLINE_SLOW_LIMIT:
                # Not one outlier (a WAL file growing): the disk is slow now. Stop blocking the loop.
                self._inline_paused_until = time.monotonic() + INLINE_PAUSE_S
                slow.clear()
                log.warning(
                    "audit_inline_commit_slow", ms=round(elapsed * 1000, 2),
                    limit_ms=self.inline_commit_max_s * 1000, paused_s=INLINE_PAUSE_S,
                )
        self.inline_commits += 1
        if self._commits_since_wal_checkpoint >= WAL_CHECKPOINT_COMMITS and not thread.wal_checkpoint_posted:
            thread.wal_checkpoint_posted = True  # the thread checkpoints the WAL, never the loop
            thread.call(self._wal_checkpoint)
        return seq

    def _wal_checkpoint(self) -> None:
        """Copy committed WAL frames into the database (PASSIVE: never waits for readers)."""
        connection = self._connection
        if self._writer is not None:
            self._writer.wal_checkpoint_posted = False
        if connection is None:
            return
        try:
            connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:  # retried after the next commits
            log.warning("audit_wal_checkpoint_failed", error=type(exc).__name__, detail=str(exc)[:300])
            return
        self._commits_since_wal_checkpoint = 0

    def _open_writer(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = _connect(self.path)
        columns = {row[1] for row in connection.execute("PRAGMA table_info(audit_records)")}
        if columns and "hash" not in columns:
            connection.close()
            raise AuditWriteError(f"{self.path} holds an audit log without a hash chain (older format)")
        connection.executescript(_SCHEMA)
        connection.execute("PRAGMA wal_autocheckpoint=0")  # the writer thread checkpoints (see module doc)
        row = connection.execute("SELECT seq, at FROM audit_checkpoints ORDER BY seq DESC LIMIT 1").fetchone()
        if row is not None:
            self._checkpoint_seq, self._checkpoint_at = int(row[0]), float(row[1])
        self._connection = connection

    async def _open(self) -> None:  # `start` opens the store on the writer thread
        raise NotImplementedError

    async def _shutdown(self) -> None:  # `close` shuts the store down on the writer thread
        raise NotImplementedError

    def _transaction(self) -> sqlite3.Connection:
        connection = self._connection
        if connection is None:
            raise AuditWriteError("the audit store is closed")
        connection.execute("BEGIN IMMEDIATE")
        return connection

    # -- writing ---------------------------------------------------------------------------------

    async def _commit(self, batch: list[PreparedRecord], *, checkpoint_only: bool = False) -> list[int]:
        return await self._write(self._write_batch, batch, checkpoint_only)  # type: ignore[no-any-return]

    async def _write(self, function: Any, *args: Any) -> Any:
        """Run `function` on the writer thread, in order with the records queued before it."""
        if self._writer is None:
            raise AuditWriteError("the audit store is not running")
        return await self._writer.call(function, *args)

    async def _read(self, function: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._reader, function, *args)

    @staticmethod
    def _head(connection: sqlite3.Connection) -> tuple[int, str]:
        row = connection.execute("SELECT seq, hash FROM audit_records ORDER BY seq DESC LIMIT 1").fetchone()
        if row is None:
            row = connection.execute("SELECT seq, hash FROM audit_anchor WHERE id = 1").fetchone()
        return (int(row[0]), str(row[1])) if row is not None else (0, GENESIS)

    def _write_batch(self, batch: Sequence[PreparedRecord], checkpoint_only: bool = False) -> list[int]:
        connection = self._transaction()
        try:
            seq, prev = self._head(connection)
            rows = []
            seqs = []
            for prepared in batch:
                record = prepared.record
                seq += 1
                hash_ = chain_hash(seq, prev, prepared.digests_json)
                rows.append(
                    (
                        seq,
                        record["id"],
                        record["time"],
                        _text(record.get("tenant")),
                        _text(record.get("end_user")),
                        _text(record.get("model")),
                        _text(record.get("outcome")),
                        record.get("status") if isinstance(record.get("status"), int) else None,
                        prepared.actions,
                        prepared.categories,
                        prepared.body,
                        prepared.digests_json,
                        prev,
                        hash_,
                    )
                )
                seqs.append(seq)
                prev = hash_
            if rows:
                connection.executemany(_INSERT, rows)
                self._review_side_effects(connection, batch)
            self._maybe_checkpoint(connection, seq, prev, force=checkpoint_only and self._closing)
            connection.execute("COMMIT")
            self._commits_since_wal_checkpoint += 1
        except BaseException:
            # SQLite has rolled back by itself after some errors (SQLITE_FULL): a second ROLLBACK
            # would raise and hide the real cause.
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
        return seqs

    def _review_side_effects(self, connection: sqlite3.Connection, batch: Sequence[PreparedRecord]) -> None:
        for prepared in batch:
            for item in review_rows(prepared):
                connection.execute(
                    "INSERT INTO review_items (id, audit_id, tenant, end_user, model, created, image_index, asset,"
                    " media_type, sha256, verdicts) VALUES (:id, :audit_id, :tenant, :end_user, :model, :created,"
                    " :image_index, :asset, :media_type, :sha256, :verdicts)",
                    item,
                )
            decision = review_decision(prepared)
            if decision is not None:
                record = prepared.record
                cursor = connection.execute(
                    "UPDATE review_items SET status = ?, reviewer = ?, decided_at = ?, note = ?, decision_audit_id = ?"
                    " WHERE id = ? AND status = 'pending'",
                    (
                        "approved" if decision["decision"] == "approve" else "rejected",
                        record.get("key_id"),
                        record["time"],
                        decision.get("note"),
                        record["id"],
                        decision["item"],
                    ),
                )
                if cursor.rowcount != 1:
                    raise ReviewConflict(f"review item {decision['item']} is unknown or already decided")

    def _maybe_checkpoint(self, connection: sqlite3.Connection, head_seq: int, head_hash: str, *, force: bool) -> None:
        if self.signer is None:
            return
        row = connection.execute("SELECT seq, at FROM audit_checkpoints ORDER BY seq DESC LIMIT 1").fetchone()
        last_seq, last_at = (int(row[0]), float(row[1])) if row else (0, self._checkpoint_at)
        if not self._checkpoint_due(head_seq, last_seq, last_at, force):
            return
        at = time.time()
        connection.execute(
            "INSERT OR IGNORE INTO audit_checkpoints (seq, hash, at, key_id, public_key, signature) VALUES (?, ?, ?, ?, ?, ?)",
            (head_seq, head_hash, at, self.signer.key_id, self.signer.public_hex, self.signer.sign(head_seq, head_hash, at)),
        )
        self._checkpoint_seq, self._checkpoint_at = head_seq, at

    # -- reading ---------------------------------------------------------------------------------

    async def query(self, query: AuditQuery) -> list[dict[str, Any]]:
        return await self._read(self._query, query)  # type: ignore[no-any-return]

    def _query(self, query: AuditQuery) -> list[dict[str, Any]]:
        connection = self._read_connection
        if connection is None:
            raise AuditWriteError("the audit store is closed")
        clauses = ["digests IS NOT NULL"]
        params: list[Any] = []
        if query.order == "desc":
            if query.before_seq is not None:
                clauses.append("seq < ?")
                params.append(query.before_seq)
        else:
            clauses.append("seq > ?")
            params.append(query.after_seq)
        for column, value in (
            ("tenant", query.tenant),
            ("end_user", query.end_user),
            ("model", query.model),
            ("outcome", query.outcome),
        ):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if query.excluded_outcome is not None:
            clauses.append("outcome IS NOT ?")
            params.append(query.excluded_outcome)
        for column, value in (("actions", query.decision), ("categories", query.category)):
            if value is not None:
                clauses.append(f"instr({column}, ?) > 0")
                params.append(f",{value},")
        if query.since is not None:
            clauses.append("ts >= ?")
            params.append(query.since)
        if query.until is not None:
            clauses.append("ts < ?")
            params.append(query.until)
        params.append(query.limit)
        direction = "DESC" if query.order == "desc" else "ASC"
        rows = connection.execute(
            f"SELECT seq, record FROM audit_records WHERE {' AND '.join(clauses)} ORDER BY seq {direction} LIMIT ?",
            params,
        ).fetchall()
        return [{**json.loads(record), "seq": seq} for seq, record in rows]

    async def get(self, audit_id: str) -> dict[str, Any] | None:
        def _get() -> dict[str, Any] | None:
            assert self._read_connection is not None
            row = self._read_connection.execute(
                "SELECT seq, ts, record, digests, prev_hash, hash, deleted_at FROM audit_records WHERE id = ?", (audit_id,)
            ).fetchone()
            if row is None:
                return None
            seq, ts, body, digests, prev_hash, hash_, deleted_at = row
            chain = {"seq": seq, "prev_hash": prev_hash, "hash": hash_}
            if digests is None:
                return {"id": audit_id, "time": ts, "seq": seq, "deleted": True, "deleted_at": deleted_at, "chain": chain}
            return {**json.loads(body), "seq": seq, "chain": {**chain, "digests": json.loads(digests)}}

        return await self._read(_get)  # type: ignore[no-any-return]

    async def ping(self) -> bool:
        try:
            await self._write(lambda: self._connection is not None and self._connection.execute("SELECT 1"))
        except Exception:
            return False
        return self._connection is not None and not self._closing

    # -- the chain ---------------------------------------------------------------------------------

    async def chain_rows(self, page: int = 2000) -> AsyncIterator[ChainRow]:  # type: ignore[override]
        """Rows in seq order from one snapshot: a private connection holding one read transaction."""
        connection: sqlite3.Connection = await self._read(_connect, self.path)
        try:
            await self._read(connection.execute, "BEGIN")
            after = -1
            while True:
                rows = await self._read(
                    lambda after=after: connection.execute(
                        "SELECT seq, id, ts, record, digests, prev_hash, hash FROM audit_records WHERE seq > ? ORDER BY seq LIMIT ?",
                        (after, page),
                    ).fetchall()
                )
                if not rows:
                    return
                for row in rows:
                    yield ChainRow(*row)
                after = rows[-1][0]
        finally:
            await self._read(connection.close)

    async def checkpoints(self) -> list[Checkpoint]:
        def _checkpoints() -> list[Checkpoint]:
            assert self._read_connection is not None
            rows = self._read_connection.execute(
                "SELECT seq, hash, at, key_id, public_key, signature FROM audit_checkpoints ORDER BY seq"
            ).fetchall()
            return [Checkpoint(*row) for row in rows]

        return await self._read(_checkpoints)  # type: ignore[no-any-return]

    async def anchor(self) -> Anchor | None:
        def _anchor() -> Anchor | None:
            assert self._read_connection is not None
            row = self._read_connection.execute(
                "SELECT seq, hash, at, key_id, public_key, signature FROM audit_anchor WHERE id = 1"
            ).fetchone()
            return None if row is None else Anchor(*row)

        return await self._read(_anchor)  # type: ignore[no-any-return]

    # -- retention -----------------------------------------------------------------------------------

    async def retention_candidates(self, before: float, after_seq: int, limit: int) -> list[dict[str, Any]]:
        def _candidates() -> list[dict[str, Any]]:
            assert self._read_connection is not None
            rows = self._read_connection.execute(
                "SELECT seq, record FROM audit_records WHERE digests IS NOT NULL AND seq > ? AND ts < ? ORDER BY seq LIMIT ?",
                (after_seq, before, limit),
            ).fetchall()
            return [{**json.loads(body), "seq": seq} for seq, body in rows]

        return await self._read(_candidates)  # type: ignore[no-any-return]

    async def redact(self, changes: Sequence[tuple[int, dict[str, Any]]]) -> None:
        def _redact() -> None:
            connection = self._transaction()
            try:
                connection.executemany(
                    "UPDATE audit_records SET record = ?, end_user = CASE WHEN ? THEN NULL ELSE end_user END"
                    " WHERE seq = ? AND digests IS NOT NULL",
                    [(canonical(record), is_redacted(record.get("end_user")), seq) for seq, record in changes],
                )
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise

        await self._write(_redact)

    async def tombstone(self, seqs: Sequence[int]) -> None:
        def _tombstone() -> None:
            connection = self._transaction()
            try:
                now = time.time()
                connection.executemany(
                    "DELETE FROM review_items WHERE audit_id = (SELECT id FROM audit_records WHERE seq = ?)",
                    [(seq,) for seq in seqs],
                )
                connection.executemany(
                    "UPDATE audit_records SET record = ?, digests = NULL, tenant = NULL, end_user = NULL, model = NULL,"
                    " outcome = NULL, status = NULL, actions = NULL, categories = NULL, deleted_at = ? WHERE seq = ?",
                    [(TOMBSTONE, now, seq) for seq in seqs],
                )
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise

        await self._write(_tombstone)

    async def compact(self, signer: CheckpointSigner) -> int:
        def _compact() -> int:
            connection = self._transaction()
            try:
                first_live = connection.execute("SELECT min(seq) FROM audit_records WHERE digests IS NOT NULL").fetchone()[0]
                bound = first_live if first_live is not None else (self._head(connection)[0] + 1)
                last = connection.execute(
                    "SELECT seq, hash FROM audit_records WHERE seq < ? ORDER BY seq DESC LIMIT 1", (bound,)
                ).fetchone()
                if last is None:
                    connection.execute("COMMIT")
                    return 0
                seq, hash_ = int(last[0]), str(last[1])
                at = time.time()
                connection.execute(
                    "INSERT OR REPLACE INTO audit_anchor (id, seq, hash, at, key_id, public_key, signature)"
                    " VALUES (1, ?, ?, ?, ?, ?, ?)",
                    (seq, hash_, at, signer.key_id, signer.public_hex, signer.sign(seq, hash_, at)),
                )
                removed = connection.execute("DELETE FROM audit_records WHERE seq <= ?", (seq,)).rowcount
                connection.execute("COMMIT")
                return int(removed)
            except BaseException:
                connection.execute("ROLLBACK")
                raise

        return await self._write(_compact)  # type: ignore[no-any-return]

    # -- the review queue ------------------------------------------------------------------------------

    async def review_items(self, query: ReviewQuery) -> list[dict[str, Any]]:
        def _items() -> list[dict[str, Any]]:
            assert self._read_connection is not None
            clauses, params = ["1 = 1"], []
            if query.tenant is not None:
                clauses.append("tenant = ?")
                params.append(query.tenant)
            if query.status is not None:
                clauses.append("status = ?")
                params.append(query.status)
            if query.audit_id is not None:
                clauses.append("audit_id = ?")
                params.append(query.audit_id)
            if query.after is not None:
                clauses.append("(created, id) > (SELECT created, id FROM review_items WHERE id = ?)")
                params.append(query.after)
            rows = self._read_connection.execute(
                f"SELECT {_REVIEW_COLUMNS} FROM review_items WHERE {' AND '.join(clauses)} ORDER BY created, id LIMIT ?",
                [*params, query.limit],
            ).fetchall()
            return [_review_dict(row) for row in rows]

        return await self._read(_items)  # type: ignore[no-any-return]

    async def review_item(self, item_id: str) -> dict[str, Any] | None:
        def _item() -> dict[str, Any] | None:
            assert self._read_connection is not None
            row = self._read_connection.execute(f"SELECT {_REVIEW_COLUMNS} FROM review_items WHERE id = ?", (item_id,)).fetchone()
            return None if row is None else _review_dict(row)

        return await self._read(_item)  # type: ignore[no-any-return]

    async def forget_review_assets(self, audit_ids: Sequence[str]) -> list[str]:
        def _forget() -> list[str]:
            connection = self._transaction()
            try:
                names: list[str] = []
                for audit_id in audit_ids:
                    rows = connection.execute(
                        "SELECT asset FROM review_items WHERE audit_id = ? AND asset IS NOT NULL", (audit_id,)
                    ).fetchall()
                    names.extend(row[0] for row in rows)
                    connection.execute("UPDATE review_items SET asset = NULL WHERE audit_id = ?", (audit_id,))
                connection.execute("COMMIT")
                return names
            except BaseException:
                connection.execute("ROLLBACK")
                raise

        return await self._write(_forget)  # type: ignore[no-any-return]
