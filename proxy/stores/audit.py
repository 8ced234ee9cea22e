"""The audit store: one durable record per exchange, acknowledged only once it is on disk.

`AuditStore` is the interface the proxy writes through; `SqliteAuditStore` (embedded default,
`audit_sqlite`) and `PostgresAuditStore` (scale-out, `audit_postgres`) implement it, and
`open_audit_store(settings)` picks one from `audit.backend`.

Writes use group commit (`GroupCommitStore`): records that arrive while a transaction is being made
durable wait and go into the next transaction together, so throughput grows with concurrency while
every `append` still returns only after its own record is durable. The one writer of each store
extends the hash chain (`audit_chain`) inside that transaction and signs a checkpoint every N
records or T seconds. The same transaction keeps the review queue in step with the trail: a record
that retains flagged images opens review items, a review decision record closes one.

This module must never acknowledge a record that is not durable, never let two writers extend the
chain at once, and never block the event loop.
"""

from __future__ import annotations

import abc
import asyncio
import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import structlog

from .audit_chain import (
    Anchor,
    ChainRow,
    ChainVerifier,
    Checkpoint,
    CheckpointSigner,
    PreparedRecord,
    VerifyReport,
    prepare,
)

if TYPE_CHECKING:
    from ..settings import Settings

log = structlog.get_logger("imagegate.audit")

#: The operation and outcome of the record an admin's read of the trail or the review queue writes
#: (`proxy.admin.review.admin_read_record`). Queries leave these records out unless `outcome` names
#: them, so the access log does not bury the exchanges it is about.
ADMIN_READ = "admin_read"


class AuditWriteError(Exception):
    """The record could not be made durable; the request must fail closed."""


class ReviewConflict(AuditWriteError):
    """The review item is unknown or was already decided; the decision record was not written."""


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """Filters for reading the trail back; every field is optional."""

    tenant: str | None = None
    end_user: str | None = None
    model: str | None = None
    #: allow, flag, blur, block, error, rejected, review, retention, or `ADMIN_READ`: records of admin
    #: reads are returned only when this asks for them.
    outcome: str | None = None
    #: A decision action any stage (or an image verdict) took: allow, flag, blur, block, error...
    decision: str | None = None
    #: A category any decision or verdict named.
    category: str | None = None
    since: float | None = None
    until: float | None = None
    #: Return records with a sequence number greater than this (cursor pagination, ascending).
    after_seq: int = 0
    #: Return records with a sequence number lower than this (cursor pagination, descending).
    before_seq: int | None = None
    order: Literal["asc", "desc"] = "asc"
    limit: int = 100

    @property
    def excluded_outcome(self) -> str | None:
        """The outcome both stores leave out: admin reads, unless `outcome` asks for one."""
        return ADMIN_READ if self.outcome is None else None


@dataclass(frozen=True, slots=True)
class ReviewQuery:
    tenant: str | None = None
    status: str | None = "pending"
    after: str | None = None
    audit_id: str | None = None
    limit: int = 100


def canonical_json(record: dict[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def review_rows(prepared: PreparedRecord) -> list[dict[str, Any]]:
    """The review items a record opens: one per retained flagged image that names a review item."""
    record = prepared.record
    items = []
    for retained in record.get("retained_images") or ():
        if not isinstance(retained, dict) or not retained.get("review_item"):
            continue
        items.append(
            {
                "id": retained["review_item"],
                "audit_id": record["id"],
                "tenant": record.get("tenant"),
                "end_user": record.get("end_user"),
                "model": record.get("model"),
                "created": record["time"],
                "image_index": retained.get("index"),
                "asset": retained.get("asset"),
                "media_type": retained.get("media_type"),
                "sha256": retained.get("sha256"),
                "verdicts": json.dumps(retained.get("verdicts") or [], sort_keys=True),
            }
        )
    return items


def review_decision(prepared: PreparedRecord) -> dict[str, Any] | None:
    """The review item a record decides, if it is a review decision record."""
    review = prepared.record.get("review")
    if isinstance(review, dict) and review.get("item") and review.get("decision") in ("approve", "reject"):
        return review
    return None


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

    # -- the chain (verification) ----------------------------------------------------------------

    @abc.abstractmethod
    def chain_rows(self, page: int = 2000) -> AsyncIterator[ChainRow]:
        """Every stored row (tombstones included) in seq order, from one consistent snapshot."""

    @abc.abstractmethod
    async def checkpoints(self) -> list[Checkpoint]: ...

    @abc.abstractmethod
    async def anchor(self) -> Anchor | None:
        """The signed hash of the last record of a deleted prefix, if a prefix was deleted."""

    # -- retention ---------------------------------------------------------------------------------

    @abc.abstractmethod
    async def retention_candidates(self, before: float, after_seq: int, limit: int) -> list[dict[str, Any]]:
        """Live records older than `before`, seq ascending from `after_seq` (with "seq")."""

    @abc.abstractmethod
    async def redact(self, changes: Sequence[tuple[int, dict[str, Any]]]) -> None:
        """Replace the stored bodies of these records (seq, record with redaction markers); the
        digests and hashes stay as they are."""

    @abc.abstractmethod
    async def tombstone(self, seqs: Sequence[int]) -> None:
        """Delete these records' content, keeping seq, id, time, prev_hash and hash."""

    @abc.abstractmethod
    async def compact(self, signer: CheckpointSigner) -> int:
        """Drop the leading run of tombstones, keeping a signed anchor; returns how many."""

    # -- the review queue ----------------------------------------------------------------------------

    @abc.abstractmethod
    async def review_items(self, query: ReviewQuery) -> list[dict[str, Any]]: ...

    @abc.abstractmethod
    async def review_item(self, item_id: str) -> dict[str, Any] | None: ...

    @abc.abstractmethod
    async def forget_review_assets(self, audit_ids: Sequence[str]) -> list[str]:
        """Unlink the stored images of these records' review items; returns the asset names."""

    async def verify(self, trusted_keys: Sequence[str] | None = None) -> VerifyReport:
        """Check the whole chain and every checkpoint; the report names the first broken record."""
        checkpoints = await self.checkpoints()
        verifier = ChainVerifier(
            anchor=await self.anchor(), checkpoint_seqs=[c.seq for c in checkpoints], trusted_keys=trusted_keys
        )
        async for row in self.chain_rows():
            if not verifier.feed(row):
                break
        return verifier.finish(checkpoints)


Pending = tuple[PreparedRecord, "asyncio.Future[int]"]


def prepare_checked(record: dict[str, Any]) -> PreparedRecord:
    """The record serialised and digested for the chain, or `AuditWriteError` if it cannot be."""
    try:
        prepared = prepare(record)
        if not isinstance(record.get("id"), str) or not isinstance(record.get("time"), (int, float)):
            raise ValueError("an audit record needs a string id and a numeric time")
    except (TypeError, ValueError) as exc:
        raise AuditWriteError(f"the record cannot be serialised: {exc}") from exc
    return prepared


class GroupCommitStore(AuditStore):
    """The write path both stores share: a queue, one writer task, one transaction per batch.

    Subclasses implement `_open`, `_shutdown` and `_commit(batch, checkpoint)`; `_commit` extends
    the chain, applies the review side effects, writes a checkpoint when `checkpoint` says so, and
    commits, all in one transaction, or raises having committed nothing.
    """

    def __init__(
        self,
        *,
        max_batch: int = 256,
        signer: CheckpointSigner | None = None,
        checkpoint_every: int = 1000,
        checkpoint_interval_s: float = 60.0,
    ) -> None:
        self.max_batch = max_batch
        self.signer = signer
        self.checkpoint_every = checkpoint_every
        self.checkpoint_interval_s = checkpoint_interval_s
        self._pending: list[Pending] = []
        self._wakeup: asyncio.Event | None = None
        #: The running writer: a task here, the writer thread in the SQLite store (None when stopped).
        self._writer: Any = None
        self._closing = False
        #: Seq and time of the newest checkpoint this store knows of (refreshed by `_commit`).
        self._checkpoint_seq = 0
        self._checkpoint_at = time.time()

    @abc.abstractmethod
    async def _open(self) -> None: ...

    @abc.abstractmethod
    async def _shutdown(self) -> None: ...

    @abc.abstractmethod
    async def _commit(self, batch: list[PreparedRecord], *, checkpoint_only: bool = False) -> list[int]: ...

    def _checkpoint_due(self, head_seq: int, last_seq: int, last_at: float, force: bool = False) -> bool:
        if self.signer is None or head_seq <= last_seq:
            return False
        return force or head_seq - last_seq >= self.checkpoint_every or time.time() - last_at >= self.checkpoint_interval_s

    async def start(self) -> None:
        await self._open()
        self._wakeup = asyncio.Event()
        self._writer = asyncio.create_task(self._write_loop(), name="audit-writer")

    async def close(self) -> None:
        self._closing = True
        if self._wakeup is not None:
            self._wakeup.set()
        if self._writer is not None:
            await self._writer
            self._writer = None
        await self._shutdown()

    async def append(self, record: dict[str, Any]) -> int:
        if self._wakeup is None or self._closing:
            raise AuditWriteError("the audit store is not running")
        prepared = prepare_checked(record)
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.append((prepared, future))
        self._wakeup.set()
        return await future

    async def _write_loop(self) -> None:
        assert self._wakeup is not None
        while True:
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout=max(0.05, self.checkpoint_interval_s))
            except TimeoutError:
                await self._idle_checkpoint()
                continue
            self._wakeup.clear()
            while self._pending:
                batch = self._pending[: self.max_batch]
                del self._pending[: self.max_batch]
                try:
                    seqs = await self._commit([prepared for prepared, _ in batch])
                except Exception as exc:
                    # The transaction rolled back: nobody in it is acknowledged. Retry one by one so
                    # that a single bad record cannot fail the records that shared its batch.
                    if len(batch) > 1:
                        self._pending[:0] = batch[1:]
                        batch = batch[:1]
                        try:
                            seqs = await self._commit([batch[0][0]])
                        except Exception as single:
                            exc = single
                        else:
                            self._settle(batch, seqs)
                            continue
                    log.error("audit_write_failed", error=type(exc).__name__, detail=str(exc)[:500])
                    error = exc if isinstance(exc, AuditWriteError) else AuditWriteError(f"audit write failed: {exc}")
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(error)
                    continue
                self._settle(batch, seqs)
            if self._closing and not self._pending:
                await self._idle_checkpoint()
                return

    async def _idle_checkpoint(self) -> None:
        """Sign the head when records arrived since the last checkpoint and T seconds have passed."""
        if self.signer is None:
            return
        try:
            await self._commit([], checkpoint_only=True)
        except Exception as exc:  # a missed checkpoint is retried at the next interval
            log.warning("audit_checkpoint_failed", error=type(exc).__name__, detail=str(exc)[:300])

    @staticmethod
    def _settle(batch: list[Pending], seqs: list[int]) -> None:
        for (_, future), seq in zip(batch, seqs, strict=True):
            if not future.done():
                future.set_result(seq)


def open_audit_store(
    settings: Settings, *, signer: CheckpointSigner | None = None, with_signer: bool = True
) -> GroupCommitStore:
    """The store `audit.backend` names, with the checkpoint key (created on first start).
    `with_signer=False` opens it without a key (for commands that only read: no key is created)."""
    from ..settings import ConfigError
    from .audit_chain import load_or_create_signing_key

    audit = settings.audit
    data_dir = settings.server.data_dir
    if signer is None and with_signer:
        key_path = audit.checkpoint_key_file if audit.checkpoint_key_file.is_absolute() else data_dir / audit.checkpoint_key_file
        signer = load_or_create_signing_key(key_path, env=audit.checkpoint_key_env)
    common: dict[str, Any] = {
        "max_batch": audit.max_batch,
        "signer": signer,
        "checkpoint_every": audit.checkpoint_every,
        "checkpoint_interval_s": audit.checkpoint_interval_s,
    }
    if audit.backend == "postgres":
        import os

        from .audit_postgres import PostgresAuditStore

        dsn = os.environ.get(audit.dsn_env) if audit.dsn_env else None
        if not dsn:
            raise ConfigError(
                "audit.backend is postgres but no DSN is set: name the environment variable that holds it in audit.dsn_env"
            )
        return PostgresAuditStore(dsn, schema=audit.postgres_schema, **common)
    sqlite_path = audit.sqlite_path
    return SqliteAuditStore(
        sqlite_path if sqlite_path.is_absolute() else data_dir / sqlite_path,
        inline_commit_max_ms=audit.inline_commit_max_ms,
        **common,
    )


def trusted_public_keys(settings: Settings, extra_files: Sequence[Path] = ()) -> list[str]:
    """Public keys `verify` trusts: the configured checkpoint key's, plus any given files."""
    from .audit_chain import load_public_key, public_key_hex

    audit = settings.audit
    keys: list[str] = []
    import os

    pem = os.environ.get(audit.checkpoint_key_env) if audit.checkpoint_key_env else None
    key_path = audit.checkpoint_key_file if audit.checkpoint_key_file.is_absolute() else settings.server.data_dir / audit.checkpoint_key_file
    if pem:
        keys.append(public_key_hex(load_public_key(pem.encode())))
    elif key_path.exists():
        keys.append(public_key_hex(load_public_key(key_path.read_bytes())))
    for path in extra_files:
        keys.append(public_key_hex(load_public_key(Path(path).read_bytes())))
    return keys


from .audit_sqlite import SqliteAuditStore  # noqa: E402  (re-exported: the embedded default)

__all__ = [
    "ADMIN_READ",
    "AuditQuery",
    "AuditStore",
    "AuditWriteError",
    "GroupCommitStore",
    "ReviewConflict",
    "ReviewQuery",
    "SqliteAuditStore",
    "canonical_json",
    "open_audit_store",
    "trusted_public_keys",
]
