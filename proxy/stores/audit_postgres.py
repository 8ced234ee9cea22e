"""`PostgresAuditStore`: the scale-out audit store, on asyncpg, behind the same interface as SQLite.

Several imagegate replicas may share one database and must keep ONE chain: every batch runs in one
transaction that first locks the chain-head row (`SELECT ... FOR UPDATE`), extends the chain from
it, copies the batch in and moves the head. Replicas therefore take turns per batch; within a
replica one writer task groups concurrent records into batches. Commits use
`synchronous_commit=on`, so an acknowledged record survives a crash of the server.

All tables live in one schema (`audit.postgres_schema`), created on first start.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg

from .audit import AuditQuery, AuditWriteError, GroupCommitStore, ReviewConflict, ReviewQuery, review_decision, review_rows
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

#: Every connection of the store: acknowledged means durable on the server (no async commit).
_SERVER_SETTINGS = {"synchronous_commit": "on", "application_name": "imagegate-audit"}

_RECORD_COLUMNS = (
    "seq", "id", "ts", "tenant", "end_user", "model", "outcome", "status", "actions", "categories",
    "record", "digests", "prev_hash", "hash",
)  # fmt: skip
_REVIEW_COLUMNS = (
    "id, audit_id, tenant, end_user, model, created, image_index, asset, media_type, sha256, verdicts,"
    " status, reviewer, decided_at, note, decision_audit_id"
)


def _schema_sql(s: str) -> str:
    return f"""
CREATE SCHEMA IF NOT EXISTS {s};
CREATE TABLE IF NOT EXISTS {s}.audit_records (
    seq        BIGINT PRIMARY KEY,
    id         TEXT NOT NULL UNIQUE,
    ts         DOUBLE PRECISION NOT NULL,
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
    deleted_at DOUBLE PRECISION
);
CREATE INDEX IF NOT EXISTS audit_records_tenant_ts ON {s}.audit_records (tenant, ts);
CREATE INDEX IF NOT EXISTS audit_records_ts ON {s}.audit_records (ts);
CREATE TABLE IF NOT EXISTS {s}.audit_chain_head (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    seq           BIGINT NOT NULL,
    hash          TEXT NOT NULL,
    checkpoint_seq BIGINT NOT NULL DEFAULT 0,
    checkpoint_at DOUBLE PRECISION NOT NULL DEFAULT 0
);
INSERT INTO {s}.audit_chain_head (id, seq, hash, checkpoint_seq, checkpoint_at)
    VALUES (1, 0, '{GENESIS}', 0, extract(epoch from now())) ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS {s}.audit_checkpoints (
    seq        BIGINT PRIMARY KEY,
    hash       TEXT NOT NULL,
    at         DOUBLE PRECISION NOT NULL,
    key_id     TEXT NOT NULL,
    public_key TEXT NOT NULL,
    signature  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS {s}.audit_anchor (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    seq        BIGINT NOT NULL,
    hash       TEXT NOT NULL,
    at         DOUBLE PRECISION NOT NULL,
    key_id     TEXT NOT NULL,
    public_key TEXT NOT NULL,
    signature  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS {s}.review_items (
    id                TEXT PRIMARY KEY,
    audit_id          TEXT NOT NULL,
    tenant            TEXT,
    end_user          TEXT,
    model             TEXT,
    created           DOUBLE PRECISION NOT NULL,
    image_index       INTEGER,
    asset             TEXT,
    media_type        TEXT,
    sha256            TEXT,
    verdicts          TEXT,
    status            TEXT NOT NULL DEFAULT 'pending',
    reviewer          TEXT,
    decided_at        DOUBLE PRECISION,
    note              TEXT,
    decision_audit_id TEXT
);
CREATE INDEX IF NOT EXISTS review_items_tenant_status ON {s}.review_items (tenant, status, created);
CREATE INDEX IF NOT EXISTS review_items_audit_id ON {s}.review_items (audit_id);
"""


def _review_dict(row: asyncpg.Record) -> dict[str, Any]:
    item = dict(row)
    item["verdicts"] = json.loads(item["verdicts"] or "[]")
    return item


class PostgresAuditStore(GroupCommitStore):
    """PostgreSQL, one writer connection per replica, the chain head serialised by a row lock."""

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "imagegate",
        max_batch: int = 256,
        signer: CheckpointSigner | None = None,
        checkpoint_every: int = 1000,
        checkpoint_interval_s: float = 60.0,
        pool_size: int = 4,
    ) -> None:
        super().__init__(
            max_batch=max_batch, signer=signer, checkpoint_every=checkpoint_every, checkpoint_interval_s=checkpoint_interval_s
        )
        if not schema.replace("_", "").isalnum() or not schema[0].isalpha() and schema[0] != "_":
            raise ValueError(f"invalid schema name {schema!r}")
        self.dsn = dsn
        self.schema = schema
        self.pool_size = pool_size
        self._connection: asyncpg.Connection | None = None
        self._pool: asyncpg.Pool | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    async def _open(self) -> None:
        try:
            self._connection = await asyncpg.connect(self.dsn, server_settings=_SERVER_SETTINGS)
            async with self._connection.transaction():
                await self._connection.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"imagegate-audit:{self.schema}")
                await self._connection.execute(_schema_sql(self.schema))
            self._pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=self.pool_size, server_settings=_SERVER_SETTINGS)
        except (OSError, asyncpg.PostgresError) as exc:
            await self._shutdown()
            raise AuditWriteError(f"cannot open the PostgreSQL audit store: {exc}") from exc

    async def _shutdown(self) -> None:
        if self._connection is not None:
            await self._connection.close()
            self._connection = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def _writer_connection(self) -> asyncpg.Connection:
        """The writer's connection, opened again when the server dropped it (a restart, a failover,
        a network cut): a PostgreSQL that comes back must not need a restart of imagegate. The pool
        used for reads reconnects by itself; this one connection must be replaced by hand."""
        connection = self._connection
        if connection is not None and not connection.is_closed():
            return connection
        if self._pool is None:
            raise AuditWriteError("the audit store is closed")
        if connection is not None:
            connection.terminate()
            self._connection = None
        try:
            self._connection = await asyncpg.connect(self.dsn, server_settings=_SERVER_SETTINGS)
        except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
            raise AuditWriteError(f"cannot reconnect to the PostgreSQL audit store: {exc}") from exc
        return self._connection

    def _pool_or_fail(self) -> asyncpg.Pool:
        if self._pool is None:
            raise AuditWriteError("the audit store is closed")
        return self._pool

    # -- writing ---------------------------------------------------------------------------------

    async def _commit(self, batch: list[PreparedRecord], *, checkpoint_only: bool = False) -> list[int]:
        connection = await self._writer_connection()
        s = self.schema
        async with connection.transaction():
            head = await connection.fetchrow(
                f"SELECT seq, hash, checkpoint_seq, checkpoint_at FROM {s}.audit_chain_head WHERE id = 1 FOR UPDATE"
            )
            seq, prev = int(head["seq"]), str(head["hash"])
            rows: list[tuple[Any, ...]] = []
            seqs: list[int] = []
            for prepared in batch:
                record = prepared.record
                seq += 1
                hash_ = chain_hash(seq, prev, prepared.digests_json)
                status = record.get("status")
                rows.append(
                    (
                        seq,
                        record["id"],
                        float(record["time"]),
                        _text(record.get("tenant")),
                        _text(record.get("end_user")),
                        _text(record.get("model")),
                        _text(record.get("outcome")),
                        status if isinstance(status, int) else None,
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
                await connection.copy_records_to_table("audit_records", records=rows, columns=_RECORD_COLUMNS, schema_name=s)
                await self._review_side_effects(connection, batch)
            checkpoint_seq, checkpoint_at = int(head["checkpoint_seq"]), float(head["checkpoint_at"])
            if self.signer is not None and self._checkpoint_due(seq, checkpoint_seq, checkpoint_at, checkpoint_only and self._closing):
                checkpoint_at = time.time()
                checkpoint_seq = seq
                await connection.execute(
                    f"INSERT INTO {s}.audit_checkpoints (seq, hash, at, key_id, public_key, signature)"
                    " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                    seq, prev, checkpoint_at, self.signer.key_id, self.signer.public_hex, self.signer.sign(seq, prev, checkpoint_at),
                )  # fmt: skip
            if rows or checkpoint_seq != head["checkpoint_seq"]:
                await connection.execute(
                    f"UPDATE {s}.audit_chain_head SET seq = $1, hash = $2, checkpoint_seq = $3, checkpoint_at = $4 WHERE id = 1",
                    seq, prev, checkpoint_seq, checkpoint_at,
                )  # fmt: skip
        return seqs

    async def _review_side_effects(self, connection: asyncpg.Connection, batch: Sequence[PreparedRecord]) -> None:
        s = self.schema
        for prepared in batch:
            items = review_rows(prepared)
            if items:
                await connection.executemany(
                    f"INSERT INTO {s}.review_items (id, audit_id, tenant, end_user, model, created, image_index, asset,"
                    " media_type, sha256, verdicts) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                    [
                        (
                            item["id"], item["audit_id"], item["tenant"], _text(item["end_user"]), item["model"],
                            float(item["created"]), item["image_index"], item["asset"], item["media_type"],
                            item["sha256"], item["verdicts"],
                        )  # fmt: skip
                        for item in items
                    ],
                )
            decision = review_decision(prepared)
            if decision is not None:
                record = prepared.record
                result = await connection.execute(
                    f"UPDATE {s}.review_items SET status = $1, reviewer = $2, decided_at = $3, note = $4,"
                    " decision_audit_id = $5 WHERE id = $6 AND status = 'pending'",
                    "approved" if decision["decision"] == "approve" else "rejected",
                    record.get("key_id"), float(record["time"]), decision.get("note"), record["id"], decision["item"],
                )  # fmt: skip
                if result != "UPDATE 1":
                    raise ReviewConflict(f"review item {decision['item']} is unknown or already decided")

    # -- reading ---------------------------------------------------------------------------------

    async def query(self, query: AuditQuery) -> list[dict[str, Any]]:
        clauses = ["digests IS NOT NULL"]
        params: list[Any] = []

        def param(value: Any) -> str:
            params.append(value)
            return f"${len(params)}"

        if query.order == "desc":
            if query.before_seq is not None:
                clauses.append(f"seq < {param(query.before_seq)}")
        else:
            clauses.append(f"seq > {param(query.after_seq)}")
        for column, value in (
            ("tenant", query.tenant),
            ("end_user", query.end_user),
            ("model", query.model),
            ("outcome", query.outcome),
        ):
            if value is not None:
                clauses.append(f"{column} = {param(value)}")
        if query.excluded_outcome is not None:
            clauses.append(f"outcome IS DISTINCT FROM {param(query.excluded_outcome)}")
        for column, value in (("actions", query.decision), ("categories", query.category)):
            if value is not None:
                clauses.append(f"strpos({column}, {param(f',{value},')}) > 0")
        if query.since is not None:
            clauses.append(f"ts >= {param(float(query.since))}")
        if query.until is not None:
            clauses.append(f"ts < {param(float(query.until))}")
        direction = "DESC" if query.order == "desc" else "ASC"
        sql = (
            f"SELECT seq, record FROM {self.schema}.audit_records WHERE {' AND '.join(clauses)}"
            f" ORDER BY seq {direction} LIMIT {param(query.limit)}"
        )
        rows = await self._pool_or_fail().fetch(sql, *params)
        return [{**json.loads(row["record"]), "seq": row["seq"]} for row in rows]

    async def get(self, audit_id: str) -> dict[str, Any] | None:
        row = await self._pool_or_fail().fetchrow(
            f"SELECT seq, ts, record, digests, prev_hash, hash, deleted_at FROM {self.schema}.audit_records WHERE id = $1",
            audit_id,
        )
        if row is None:
            return None
        chain = {"seq": row["seq"], "prev_hash": row["prev_hash"], "hash": row["hash"]}
        if row["digests"] is None:
            return {"id": audit_id, "time": row["ts"], "seq": row["seq"], "deleted": True, "deleted_at": row["deleted_at"], "chain": chain}
        return {**json.loads(row["record"]), "seq": row["seq"], "chain": {**chain, "digests": json.loads(row["digests"])}}

    async def ping(self) -> bool:
        try:
            await self._pool_or_fail().fetchval("SELECT 1")
        except Exception:
            return False
        return not self._closing

    # -- the chain ---------------------------------------------------------------------------------

    async def chain_rows(self, page: int = 2000) -> AsyncIterator[ChainRow]:  # type: ignore[override]
        async with self._pool_or_fail().acquire() as connection:
            async with connection.transaction(isolation="repeatable_read", readonly=True):
                cursor = connection.cursor(
                    f"SELECT seq, id, ts, record, digests, prev_hash, hash FROM {self.schema}.audit_records ORDER BY seq",
                    prefetch=page,
                )
                async for row in cursor:
                    yield ChainRow(int(row[0]), row[1], float(row[2]), row[3], row[4], row[5], row[6])

    async def checkpoints(self) -> list[Checkpoint]:
        rows = await self._pool_or_fail().fetch(
            f"SELECT seq, hash, at, key_id, public_key, signature FROM {self.schema}.audit_checkpoints ORDER BY seq"
        )
        return [Checkpoint(int(r[0]), r[1], float(r[2]), r[3], r[4], r[5]) for r in rows]

    async def anchor(self) -> Anchor | None:
        row = await self._pool_or_fail().fetchrow(
            f"SELECT seq, hash, at, key_id, public_key, signature FROM {self.schema}.audit_anchor WHERE id = 1"
        )
        return None if row is None else Anchor(int(row[0]), row[1], float(row[2]), row[3], row[4], row[5])

    # -- retention -----------------------------------------------------------------------------------

    async def retention_candidates(self, before: float, after_seq: int, limit: int) -> list[dict[str, Any]]:
        rows = await self._pool_or_fail().fetch(
            f"SELECT seq, record FROM {self.schema}.audit_records WHERE digests IS NOT NULL AND seq > $1 AND ts < $2"
            " ORDER BY seq LIMIT $3",
            after_seq, float(before), limit,
        )  # fmt: skip
        return [{**json.loads(row["record"]), "seq": row["seq"]} for row in rows]

    async def redact(self, changes: Sequence[tuple[int, dict[str, Any]]]) -> None:
        async with self._pool_or_fail().acquire() as connection, connection.transaction():
            await connection.executemany(
                f"UPDATE {self.schema}.audit_records SET record = $1,"
                " end_user = CASE WHEN $2 THEN NULL ELSE end_user END WHERE seq = $3 AND digests IS NOT NULL",
                [(canonical(record), is_redacted(record.get("end_user")), seq) for seq, record in changes],
            )

    async def tombstone(self, seqs: Sequence[int]) -> None:
        s = self.schema
        async with self._pool_or_fail().acquire() as connection, connection.transaction():
            await connection.execute(
                f"DELETE FROM {s}.review_items WHERE audit_id IN (SELECT id FROM {s}.audit_records WHERE seq = ANY($1::bigint[]))",
                list(seqs),
            )
            await connection.execute(
                f"UPDATE {s}.audit_records SET record = $1, digests = NULL, tenant = NULL, end_user = NULL, model = NULL,"
                " outcome = NULL, status = NULL, actions = NULL, categories = NULL, deleted_at = $2 WHERE seq = ANY($3::bigint[])",
                TOMBSTONE, time.time(), list(seqs),
            )  # fmt: skip

    async def compact(self, signer: CheckpointSigner) -> int:
        s = self.schema
        async with self._pool_or_fail().acquire() as connection, connection.transaction():
            head = await connection.fetchrow(f"SELECT seq FROM {s}.audit_chain_head WHERE id = 1 FOR UPDATE")
            first_live = await connection.fetchval(f"SELECT min(seq) FROM {s}.audit_records WHERE digests IS NOT NULL")
            bound = first_live if first_live is not None else int(head["seq"]) + 1
            last = await connection.fetchrow(
                f"SELECT seq, hash FROM {s}.audit_records WHERE seq < $1 ORDER BY seq DESC LIMIT 1", bound
            )
            if last is None:
                return 0
            seq, hash_ = int(last["seq"]), str(last["hash"])
            at = time.time()
            await connection.execute(
                f"INSERT INTO {s}.audit_anchor (id, seq, hash, at, key_id, public_key, signature) VALUES (1, $1, $2, $3, $4, $5, $6)"
                " ON CONFLICT (id) DO UPDATE SET seq = EXCLUDED.seq, hash = EXCLUDED.hash, at = EXCLUDED.at,"
                " key_id = EXCLUDED.key_id, public_key = EXCLUDED.public_key, signature = EXCLUDED.signature",
                seq, hash_, at, signer.key_id, signer.public_hex, signer.sign(seq, hash_, at),
            )  # fmt: skip
            result = await connection.execute(f"DELETE FROM {s}.audit_records WHERE seq <= $1", seq)
            return int(result.split()[-1])

    # -- the review queue ------------------------------------------------------------------------------

    async def review_items(self, query: ReviewQuery) -> list[dict[str, Any]]:
        s = self.schema
        clauses, params = ["TRUE"], []
        for column, value in (("tenant", query.tenant), ("status", query.status), ("audit_id", query.audit_id)):
            if value is not None:
                params.append(value)
                clauses.append(f"{column} = ${len(params)}")
        if query.after is not None:
            params.append(query.after)
            clauses.append(f"(created, id) > (SELECT created, id FROM {s}.review_items WHERE id = ${len(params)})")
        params.append(query.limit)
        rows = await self._pool_or_fail().fetch(
            f"SELECT {_REVIEW_COLUMNS} FROM {s}.review_items WHERE {' AND '.join(clauses)} ORDER BY created, id LIMIT ${len(params)}",
            *params,
        )
        return [_review_dict(row) for row in rows]

    async def review_item(self, item_id: str) -> dict[str, Any] | None:
        row = await self._pool_or_fail().fetchrow(f"SELECT {_REVIEW_COLUMNS} FROM {self.schema}.review_items WHERE id = $1", item_id)
        return None if row is None else _review_dict(row)

    async def forget_review_assets(self, audit_ids: Sequence[str]) -> list[str]:
        s = self.schema
        async with self._pool_or_fail().acquire() as connection, connection.transaction():
            rows = await connection.fetch(
                f"SELECT asset FROM {s}.review_items WHERE audit_id = ANY($1::text[]) AND asset IS NOT NULL FOR UPDATE",
                list(audit_ids),
            )
            await connection.execute(f"UPDATE {s}.review_items SET asset = NULL WHERE audit_id = ANY($1::text[])", list(audit_ids))
        return [row["asset"] for row in rows]


def _text(value: Any) -> str | None:
    """Index columns hold text; a redaction marker or other structure is not indexed."""
    return value if isinstance(value, str) or value is None else None
