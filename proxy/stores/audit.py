"""The audit store: one durable record per exchange, acknowledged only once it is on disk.

`AuditStore` is the interface the proxy writes through; `SqliteAuditStore` is the embedded default.
Writes use group commit: records that arrive while a transaction is being made durable wait and go
into the next transaction together, so throughput grows with concurrency while every `append`
still returns only after its own record is durable (SQLite WAL, `synchronous=FULL`).

This module must never acknowledge a record that is not durable, and never block the event loop:
all SQLite work runs on one dedicated writer thread.
"""

from __future__ import annotations

import abc
import asyncio
import json
import sqlite3
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger("imagegate.audit")


class AuditWriteError(Exception):
    """The record could not be made durable; the request must fail closed."""


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """Filters for reading the trail back; every field is optional."""

    tenant: str | None = None
    end_user: str | None = None
    model: str | None = None
    outcome: str | None = None
    since: float | None = None
    until: float | None = None
    #: Return records with a sequence number greater than this (cursor pagination).
    after_seq: int = 0
    limit: int = 100


def canonical_json(record: dict[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


class AuditStore(abc.ABC):
    """Where audit records go. Implementations must make `append` durable before returning."""

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def append(self, record: dict[str, Any]) -> int:
        """Write one record durably and return its sequence number."""

    @abc.abstractmethod
    async def query(self, query: AuditQuery) -> list[dict[str, Any]]: ...

    @abc.abstractmethod
    async def get(self, audit_id: str) -> dict[str, Any] | None: ...

    @abc.abstractmethod
    async def ping(self) -> bool:
        """Whether the store is reachable (readiness)."""

    @abc.abstractmethod
    async def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_records (
    seq       INTEGER PRIMARY KEY,
    id        TEXT NOT NULL UNIQUE,
    ts        REAL NOT NULL,
    tenant    TEXT,
    end_user  TEXT,
    model     TEXT,
    outcome   TEXT,
    status    INTEGER,
    record    TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_records_tenant_ts ON audit_records (tenant, ts);
CREATE INDEX IF NOT EXISTS audit_records_ts ON audit_records (ts);
"""


class SqliteAuditStore(AuditStore):
    """SQLite in WAL mode with `synchronous=FULL`, one writer thread, group commit."""

    def __init__(self, path: Path, *, max_batch: int = 256) -> None:
        self.path = Path(path)
        self.max_batch = max_batch
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-sqlite")
        self._connection: sqlite3.Connection | None = None
        self._pending: list[tuple[dict[str, Any], asyncio.Future[int]]] = []
        self._wakeup: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None
        self._closing = False

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._open)
        self._wakeup = asyncio.Event()
        self._writer = asyncio.create_task(self._write_loop(), name="audit-writer")

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=FULL")
        connection.execute("PRAGMA busy_timeout=5000")
        connection.executescript(_SCHEMA)
        self._connection = connection

    async def close(self) -> None:
        self._closing = True
        if self._wakeup is not None:
            self._wakeup.set()
        if self._writer is not None:
            await self._writer
        loop = asyncio.get_running_loop()
        if self._connection is not None:
            await loop.run_in_executor(self._executor, self._connection.close)
            self._connection = None
        self._executor.shutdown(wait=True)

    # -- writing ---------------------------------------------------------------------------------

    async def append(self, record: dict[str, Any]) -> int:
        if self._wakeup is None or self._closing:
            raise AuditWriteError("the audit store is not running")
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.append((record, future))
        self._wakeup.set()
        return await future

    async def _write_loop(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                batch = self._pending[: self.max_batch]
                del self._pending[: self.max_batch]
                try:
                    seqs = await loop.run_in_executor(self._executor, self._write_batch, [r for r, _ in batch])
                except Exception as exc:
                    # The transaction rolled back: nobody in it is acknowledged. Retry one by one so
                    # that a single bad record cannot fail the records that shared its batch.
                    if len(batch) > 1:
                        self._pending[:0] = [(r, f) for r, f in batch[1:]]
                        batch = batch[:1]
                        try:
                            seqs = await loop.run_in_executor(self._executor, self._write_batch, [batch[0][0]])
                        except Exception as single:
                            exc = single
                        else:
                            self._settle(batch, seqs)
                            continue
                    log.error("audit_write_failed", error=type(exc).__name__, detail=str(exc))
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(AuditWriteError(f"audit write failed: {exc}"))
                    continue
                self._settle(batch, seqs)
            if self._closing and not self._pending:
                return

    @staticmethod
    def _settle(batch: list[tuple[dict[str, Any], asyncio.Future[int]]], seqs: list[int]) -> None:
        for (_, future), seq in zip(batch, seqs, strict=True):
            if not future.done():
                future.set_result(seq)

    def _write_batch(self, records: Sequence[dict[str, Any]]) -> list[int]:
        connection = self._connection
        if connection is None:
            raise AuditWriteError("the audit store is closed")
        seqs: list[int] = []
        connection.execute("BEGIN IMMEDIATE")
        try:
            for record in records:
                cursor = connection.execute(
                    "INSERT INTO audit_records (id, ts, tenant, end_user, model, outcome, status, record)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        record["id"],
                        record["time"],
                        record.get("tenant"),
                        record.get("end_user"),
                        record.get("model"),
                        record.get("outcome"),
                        record.get("status"),
                        canonical_json(record),
                    ),
                )
                seqs.append(int(cursor.lastrowid or 0))
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        return seqs

    # -- reading ---------------------------------------------------------------------------------

    async def query(self, query: AuditQuery) -> list[dict[str, Any]]:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._query, query)

    def _query(self, query: AuditQuery) -> list[dict[str, Any]]:
        assert self._connection is not None
        clauses = ["seq > ?"]
        params: list[Any] = [query.after_seq]
        for column, value in (
            ("tenant", query.tenant),
            ("end_user", query.end_user),
            ("model", query.model),
            ("outcome", query.outcome),
        ):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if query.since is not None:
            clauses.append("ts >= ?")
            params.append(query.since)
        if query.until is not None:
            clauses.append("ts < ?")
            params.append(query.until)
        params.append(query.limit)
        rows = self._connection.execute(
            f"SELECT seq, record FROM audit_records WHERE {' AND '.join(clauses)} ORDER BY seq LIMIT ?",
            params,
        ).fetchall()
        return [{**json.loads(record), "seq": seq} for seq, record in rows]

    async def get(self, audit_id: str) -> dict[str, Any] | None:
        def _get() -> dict[str, Any] | None:
            assert self._connection is not None
            row = self._connection.execute(
                "SELECT seq, record FROM audit_records WHERE id = ?", (audit_id,)
            ).fetchone()
            return None if row is None else {**json.loads(row[1]), "seq": row[0]}

        return await asyncio.get_running_loop().run_in_executor(self._executor, _get)

    async def ping(self) -> bool:
        try:
            await asyncio.get_running_loop().run_in_executor(
                self._executor, lambda: self._connection is not None and self._connection.execute("SELECT 1")
            )
        except Exception:
            return False
        return self._connection is not None and not self._closing
