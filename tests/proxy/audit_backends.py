"""The audit-store backends every audit test runs against: SQLite in a temporary folder and the
real PostgreSQL at 127.0.0.1:5432 (trust auth, database `test`), in a schema of its own per test,
dropped afterwards. PostgreSQL tests skip, saying why, when no server answers."""

from __future__ import annotations

import asyncio
import os
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from proxy.stores.audit import GroupCommitStore, SqliteAuditStore
from proxy.stores.audit_chain import CheckpointSigner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

PG_DSN_ENV = "IMAGEGATE_TEST_PG_DSN"
_CANDIDATES = [
    os.environ.get(PG_DSN_ENV, ""),
    "postgresql://postgres@127.0.0.1:5432/test",
    "postgresql://root@127.0.0.1:5432/test",
]
_found: list[str | None] = []


async def postgres_dsn() -> str | None:
    """A DSN that connects, or None (cached for the session)."""
    if _found:
        return _found[0]
    import asyncpg

    for dsn in filter(None, _CANDIDATES):
        try:
            connection = await asyncio.wait_for(asyncpg.connect(dsn), timeout=3)
        except Exception:
            continue
        await connection.close()
        _found.append(dsn)
        return dsn
    _found.append(None)
    return None


def new_signer() -> CheckpointSigner:
    return CheckpointSigner(Ed25519PrivateKey.generate())


@dataclass
class Backend:
    name: str
    tmp_path: Path
    dsn: str | None = None
    schema: str | None = None
    stores: list[GroupCommitStore] = field(default_factory=list)

    def store(self, **kwargs: Any) -> GroupCommitStore:
        if self.name == "sqlite":
            store: GroupCommitStore = SqliteAuditStore(self.tmp_path / "audit.sqlite3", **kwargs)
        else:
            from proxy.stores.audit_postgres import PostgresAuditStore

            assert self.dsn and self.schema
            store = PostgresAuditStore(self.dsn, schema=self.schema, **kwargs)
        self.stores.append(store)
        return store

    def audit_settings(self) -> dict[str, Any]:
        """The `audit:` config section that opens this backend (the DSN via PG_DSN_ENV)."""
        if self.name == "sqlite":
            return {"backend": "sqlite"}
        return {"backend": "postgres", "dsn_env": PG_DSN_ENV, "postgres_schema": self.schema}

    def env(self) -> dict[str, str]:
        return {PG_DSN_ENV: self.dsn} if self.dsn else {}

    async def execute(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """Run raw SQL against the backend's database, as someone tampering with it would.
        Tables are written `{p}name`, parameters `$1`, `$2`... in order."""
        sql = sql.format(p="" if self.name == "sqlite" else f"{self.schema}.")
        if self.name == "sqlite":
            import sqlite3

            connection = sqlite3.connect(self.tmp_path / "audit.sqlite3", isolation_level=None)
            try:
                return [tuple(row) for row in connection.execute(re.sub(r"\$\d+", "?", sql), args).fetchall()]
            finally:
                connection.close()
        import asyncpg

        connection = await asyncpg.connect(self.dsn)
        try:
            return [tuple(row) for row in await connection.fetch(sql, *args)]
        finally:
            await connection.close()


async def make_backend(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Backend:
    if name == "sqlite":
        return Backend("sqlite", tmp_path)
    dsn = await postgres_dsn()
    if dsn is None:
        pytest.skip("no PostgreSQL server at 127.0.0.1:5432 (trust auth, database `test`)")
    monkeypatch.setenv(PG_DSN_ENV, dsn)
    return Backend("postgres", tmp_path, dsn=dsn, schema=f"igtest_{os.getpid()}_{uuid.uuid4().hex[:8]}")


async def drop_backend(backend: Backend) -> None:
    for store in backend.stores:
        if store._writer is not None:  # a test that failed half-way
            await store.close()
    if backend.name == "postgres":
        import asyncpg

        connection = await asyncpg.connect(backend.dsn)
        try:
            await connection.execute(f"DROP SCHEMA IF EXISTS {backend.schema} CASCADE")
        finally:
            await connection.close()


BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Backend]:
    chosen = await make_backend(request.param, tmp_path, monkeypatch)
    try:
        yield chosen
    finally:
        await drop_backend(chosen)
