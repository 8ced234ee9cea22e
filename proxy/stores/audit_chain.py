"""The hash chain that makes the audit trail tamper-evident, and the signed checkpoints over it.

Every record commits to one digest per top-level field (`field_digest`), and its chain hash commits
to its sequence number, the previous record's hash and those digests (`chain_hash`), in the manner
of Certificate Transparency or CloudTrail log file validation. Because the chain commits to field
digests rather than to the values, retention can later replace a field's value by a redaction
marker, or a whole record by a tombstone, and the chain still verifies. Checkpoints sign
(seq, hash) with Ed25519 every N records or T seconds, so truncating the log's tail or rewriting
the whole chain from some point on is detected too.

Stores call `prepare` (per-field serialisation and digests, no chain state) and `chain_hash` (on
their single writer, where the chain head lives). `verify_chain` is pure: it reads rows and says
which record first breaks the chain. Nothing here does I/O except `load_or_create_signing_key`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

#: The `prev_hash` of the first record of a log.
GENESIS = "0" * 64
#: The key a redacted field's value is replaced with: {"$redacted": {"at": ..., "rule": ...}}.
REDACTED = "$redacted"
#: A deleted record keeps only this as its body (plus seq, id, time, prev_hash and hash).
TOMBSTONE = '{"$deleted":true}'

_dumps = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode
_sha256 = hashlib.sha256


def canonical(value: Any) -> str:
    return _dumps(value)


def field_digest(name: str, serialized: str) -> str:
    return _sha256(f"{name}\x00{serialized}".encode()).hexdigest()


@dataclass(slots=True)
class PreparedRecord:
    """A record serialised once: the stored JSON and its per-field digests (no chain state yet)."""

    record: dict[str, Any]
    body: str
    #: Canonical JSON of {field: digest}: what the chain hash commits to.
    digests_json: str
    actions: str
    categories: str


def _marks(record: Mapping[str, Any]) -> tuple[str, str]:
    """",flag,block," style strings of the decisions' actions and categories, for filtering."""
    actions: set[str] = set()
    categories: set[str] = set()
    for decision in record.get("decisions") or ():
        if isinstance(decision, dict):
            if decision.get("action"):
                actions.add(str(decision["action"]))
            if decision.get("category"):
                categories.add(str(decision["category"]))
    for image in record.get("images") or ():
        verdict = image.get("verdict") if isinstance(image, dict) else None
        if isinstance(verdict, dict):
            if verdict.get("action"):
                actions.add(str(verdict["action"]))
            if verdict.get("category"):
                categories.add(str(verdict["category"]))
    if not actions and not categories:
        return ",", ","
    return ("," + ",".join(sorted(actions)) + ",", "," + ",".join(sorted(categories)) + ",")


_encode_string = json.encoder.encode_basestring  # type: ignore[attr-defined]
_float_repr = float.__repr__
_KEYS: dict[str, tuple[str, bytes]] = {}


def _serialize(value: Any) -> str:
    """`canonical(value)`, with fast paths for the scalar types most fields hold."""
    kind = type(value)
    if kind is str:
        return _encode_string(value)  # type: ignore[no-any-return]
    if value is None:
        return "null"
    if kind is int:
        return int.__repr__(value)
    if kind is float and value == value and value not in (_INF, -_INF):
        return _float_repr(value)
    if kind is bool:
        return "true" if value else "false"
    return _dumps(value)


_INF = float("inf")


def prepare(record: dict[str, Any]) -> PreparedRecord:
    """Serialise `record` field by field; the stored body is the canonical JSON of the whole record
    (byte for byte what `canonical(record)` gives), and each field gets its digest."""
    pieces: list[str] = []
    digests: list[str] = []
    keys = _KEYS
    for name in sorted(record):
        cached = keys.get(name)
        if cached is None:
            cached = keys[name] = (_encode_string(name), f"{name}\x00".encode())
        key, prefix = cached
        serialized = _serialize(record[name])
        pieces.append(key + ":" + serialized)
        digests.append(key + ':"' + _sha256(prefix + serialized.encode()).hexdigest() + '"')
    actions, categories = _marks(record)
    return PreparedRecord(record, "{" + ",".join(pieces) + "}", "{" + ",".join(digests) + "}", actions, categories)


def chain_hash(seq: int, prev_hash: str, digests_json: str) -> str:
    """The record's hash: commits to its position, its predecessor and every field digest."""
    return _sha256(f"{seq}\x00{prev_hash}\x00{digests_json}".encode()).hexdigest()


def redaction_marker(rule: str, at: float) -> dict[str, Any]:
    return {REDACTED: {"at": round(at, 3), "rule": rule}}


def is_redacted(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and REDACTED in value


# -- signed checkpoints -----------------------------------------------------------------------------


class CheckpointSigner:
    """Signs (seq, hash, time) with an Ed25519 key; the key id is the public key's SHA-256 prefix."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.public_key = private_key.public_key()
        self.public_hex = public_key_hex(self.public_key)
        self.key_id = key_id(self.public_key)

    def sign(self, seq: int, hash_: str, at: float) -> str:
        return base64.b64encode(self._key.sign(checkpoint_message(seq, hash_, at))).decode()


def checkpoint_message(seq: int, hash_: str, at: float) -> bytes:
    return f"imagegate-audit-checkpoint\x00{seq}\x00{hash_}\x00{at!r}".encode()


def public_key_hex(key: Ed25519PublicKey) -> str:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def key_id(key: Ed25519PublicKey) -> str:
    return hashlib.sha256(bytes.fromhex(public_key_hex(key))).hexdigest()[:16]


def load_or_create_signing_key(path: Path, *, env: str | None = None) -> CheckpointSigner:
    """The checkpoint key: PEM from the environment variable `env` if set, else the file at `path`,
    created (mode 0600) on first start."""
    pem = os.environ.get(env) if env else None
    if pem:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    elif path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    else:
        key = Ed25519PrivateKey.generate()
        path.parent.mkdir(parents=True, exist_ok=True)
        data = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("the audit checkpoint key must be an Ed25519 private key (PEM, PKCS#8)")
    return CheckpointSigner(key)


def load_public_key(data: bytes) -> Ed25519PublicKey:
    """A trusted key for `verify`: a PEM public or private key, or 64 hex digits (raw public key)."""
    text = data.strip()
    if len(text) == 64:
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(text.decode()))
    if b"PRIVATE KEY" in text:
        private = serialization.load_pem_private_key(text, password=None)
        assert isinstance(private, Ed25519PrivateKey)
        return private.public_key()
    public = serialization.load_pem_public_key(text)
    if not isinstance(public, Ed25519PublicKey):
        raise ValueError("not an Ed25519 key")
    return public


# -- verification -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChainRow:
    """One stored record as the verifier sees it. `digests` is None for a tombstone."""

    seq: int
    id: str
    ts: float
    body: str
    digests: str | None
    prev_hash: str
    hash: str


@dataclass(frozen=True, slots=True)
class Checkpoint:
    seq: int
    hash: str
    at: float
    key_id: str
    public_key: str
    signature: str


@dataclass(frozen=True, slots=True)
class Anchor:
    """What remains of a deleted prefix: the last deleted record's seq and hash, signed."""

    seq: int
    hash: str
    at: float
    key_id: str
    public_key: str
    signature: str


@dataclass(slots=True)
class Break:
    seq: int
    id: str | None
    reason: str

    def __str__(self) -> str:
        return f"record seq={self.seq} id={self.id or '?'}: {self.reason}"


@dataclass(slots=True)
class VerifyReport:
    records: int = 0
    tombstones: int = 0
    redacted_fields: int = 0
    checkpoints: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    head_hash: str = GENESIS
    first_break: Break | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.first_break is None and not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "records": self.records,
            "tombstones": self.tombstones,
            "redacted_fields": self.redacted_fields,
            "checkpoints": self.checkpoints,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "head_hash": self.head_hash,
            "first_break": None if self.first_break is None else str(self.first_break),
            "problems": list(self.problems),
        }


def _check_signature(public_hex: str, signature: str, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_hex)).verify(base64.b64decode(signature), message)
    except (InvalidSignature, ValueError):
        return False
    return True


def _row_break(row: ChainRow, expected_seq: int, prev: str) -> str | None:
    """Why `row` does not continue the chain whose head is (expected_seq - 1, prev), or None."""
    if row.seq != expected_seq:
        return f"expected seq {expected_seq} here: records are missing or out of order"
    if row.prev_hash != prev:
        return "its previous-hash does not match the record before it (a record was removed, inserted or reordered)"
    if row.digests is None:  # tombstone: its hash is committed to by the next record's prev_hash
        if row.body != TOMBSTONE:
            return "a tombstone carries content"
        return None
    try:
        record = json.loads(row.body)
        digests = json.loads(row.digests)
    except ValueError:
        return "its stored body is not valid JSON"
    if not isinstance(record, dict) or not isinstance(digests, dict):
        return "its stored body is not a record"
    if record.get("id") != row.id:
        return "its id column differs from its content"
    if set(record) != set(digests):
        return "its fields differ from the fields it committed to (a field was added or removed)"
    for name, value in record.items():
        if is_redacted(value):
            continue
        if field_digest(name, _serialize(value)) != digests[name]:
            return f"field {name!r} was altered"
    if chain_hash(row.seq, row.prev_hash, _dumps(digests)) != row.hash:
        return "its hash does not match its content"
    return None


class ChainVerifier:
    """Walks the chain in seq order, fed one row at a time (so a store can page through a big log),
    and remembers the first record that breaks it.

    `trusted_keys` are raw public keys (hex) whose signatures count; None trusts the key each
    checkpoint names (signatures are still checked, but whoever can write the store could re-sign).
    """

    def __init__(self, *, anchor: Anchor | None = None, checkpoint_seqs: Iterable[int] = (), trusted_keys: Iterable[str] | None = None) -> None:
        self.report = VerifyReport()
        self.anchor = anchor
        self.trusted = None if trusted_keys is None else set(trusted_keys)
        self._expected_seq, self._prev = 1, GENESIS
        self._wanted = set(checkpoint_seqs)
        self._hashes: dict[int, str] = {}
        if anchor is not None:
            problem = self._signature_problem(anchor.public_key, anchor.signature, checkpoint_message(anchor.seq, anchor.hash, anchor.at))
            if problem:
                self.report.problems.append(f"the anchor of the deleted prefix (seq {anchor.seq}) {problem}")
            self._expected_seq, self._prev = anchor.seq + 1, anchor.hash

    def _signature_problem(self, public_hex: str, signature: str, message: bytes) -> str | None:
        if self.trusted is not None and public_hex not in self.trusted:
            return "is signed by an untrusted key"
        if not _check_signature(public_hex, signature, message):
            return "has a bad signature"
        return None

    def feed(self, row: ChainRow) -> bool:
        """Check one row; False once the chain is broken (stop feeding)."""
        report = self.report
        if report.first_break is not None:
            return False
        if report.first_seq is None:
            report.first_seq = row.seq
        reason = _row_break(row, self._expected_seq, self._prev)
        if reason is not None:
            report.first_break = Break(row.seq, row.id, reason)
            return False
        report.records += 1
        if row.digests is None:
            report.tombstones += 1
        else:
            report.redacted_fields += row.body.count(f'"{REDACTED}"')
        if row.seq in self._wanted:
            self._hashes[row.seq] = row.hash
        self._expected_seq, self._prev = row.seq + 1, row.hash
        report.last_seq = row.seq
        return True

    def finish(self, checkpoints: Iterable[Checkpoint]) -> VerifyReport:
        report = self.report
        report.head_hash = self._prev
        last = self._expected_seq - 1
        for checkpoint in sorted(checkpoints, key=lambda c: c.seq):
            report.checkpoints += 1
            message = checkpoint_message(checkpoint.seq, checkpoint.hash, checkpoint.at)
            problem = self._signature_problem(checkpoint.public_key, checkpoint.signature, message)
            if problem:
                report.problems.append(f"checkpoint at seq {checkpoint.seq} (key {checkpoint.key_id}) {problem}")
                continue
            if self.anchor is not None and checkpoint.seq <= self.anchor.seq:
                continue
            if report.first_break is not None and checkpoint.seq >= report.first_break.seq:
                continue
            if checkpoint.seq > last:
                if report.first_break is None:
                    report.first_break = Break(
                        last + 1, None, f"missing: a signed checkpoint covers the log up to seq {checkpoint.seq} (the tail was removed)"
                    )
                continue
            if self._hashes.get(checkpoint.seq) != checkpoint.hash:
                report.problems.append(
                    f"checkpoint at seq {checkpoint.seq} does not match that record's hash: the chain was rewritten at or before it"
                )
        return report


def verify_chain(
    rows: Iterable[ChainRow],
    *,
    checkpoints: Iterable[Checkpoint] = (),
    anchor: Anchor | None = None,
    trusted_keys: Iterable[str] | None = None,
) -> VerifyReport:
    """Walk the chain in seq order and report the first record that breaks it."""
    checkpoints = list(checkpoints)
    verifier = ChainVerifier(anchor=anchor, checkpoint_seqs=[c.seq for c in checkpoints], trusted_keys=trusted_keys)
    for row in rows:
        if not verifier.feed(row):
            break
    return verifier.finish(checkpoints)


def now() -> float:
    return time.time()
