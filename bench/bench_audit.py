"""Durable audit records per second, with the hash chain, under concurrent load, on each store.

For each store (SQLite WAL synchronous=FULL; PostgreSQL when one answers at 127.0.0.1:5432) many
concurrent tasks append records through the real store (group commit, hash chain, signed
checkpoints every 1000 records) and every append waits for durability. In the same run it measures
the raw floor: SQLite WAL with synchronous=FULL, batches of 64 small chained records (sha256 over
the previous hash and the record) written by one thread, no event loop, no per-field digests.
It also times the CPU the chain costs per record (per-field digests + chain hash), which is what
each request pays on top of the audit write it already did.

Issue 6 sets 50,000 records/s for SQLite on a machine where this raw floor ran at about 190,000
records/s, that is 0.26x the floor. Machines differ (the floor measured 88,000-115,000 here), so the
table also prints the target scaled to this run's floor: 50,000 x floor / 190,000 (small records,
the shape the floor writes).

    python bench/bench_audit.py [--records 100000] [--concurrency 512] [--record small|full|both]
                                [--pg-records 50000] [--no-postgres] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from proxy.stores.audit_chain import CheckpointSigner, chain_hash, prepare  # noqa: E402

TARGETS = {"sqlite": 50_000, "postgres": 10_000}
#: The raw floor on the machine issue 6's SQLite target was set on.
ISSUE_RAW_SQLITE_RPS = 190_000
PG_DSNS = [os.environ.get("IMAGEGATE_TEST_PG_DSN", ""), "postgresql://postgres@127.0.0.1:5432/test", "postgresql://root@127.0.0.1:5432/test"]


def small_record(i: int) -> dict[str, Any]:
    return {"id": f"aud_{uuid.uuid4().hex}", "time": time.time(), "tenant": "acme", "model": "demo", "outcome": "allow", "status": 200}


def full_record(i: int) -> dict[str, Any]:
    """The shape `build_record` writes for a generation that went through the whole chain."""
    return {
        "id": f"aud_{uuid.uuid4().hex}", "time": time.time(), "request_id": f"req_{uuid.uuid4().hex}",
        "route": "/v1/images/generations", "operation": "generate", "tenant": "acme", "key_id": "abcdef123456",
        "end_user": f"u-{i % 100}", "client_address": "10.1.2.3", "provider": "openai", "status": 200, "outcome": "allow",
        "decisions": [
            {"stage": "authenticate", "action": "allow"},
            {"stage": "limits", "action": "allow", "details": {"remaining": 99}},
            {"stage": "licence", "action": "allow", "reason": "hosted model, commercial use allowed"},
            {"stage": "prompt_filter", "action": "allow", "score": 0.02},
            {"stage": "output_classifier", "action": "allow", "category": None, "image_index": 0, "score": 0.04},
        ],
        "licence": {"model": "gpt-image-1", "action": "allow"}, "cost_estimate_usd": 0.042, "cost_usd": 0.042,
        "policy_version": "sha256:0123456789abcdef", "latency_ms": 12.345, "model": "gpt-image-1", "size": "1024x1024",
        "n": 1, "quality": "low", "output_format": "png", "prompt": f"a red bicycle leaning on a wall, number {i}",
        "negative_prompt": None, "prompt_sha256": hashlib.sha256(str(i).encode()).hexdigest(), "input_images": [],
        "upstream": {"status": 200, "latency_ms": 3456.7, "usage": {"total_tokens": 272}},
        "images": [{"index": 0, "sha256": hashlib.sha256(b"%d" % i).hexdigest(), "media_type": "image/png", "bytes": 1234567,
                    "released": True, "blurred": False, "manifest_id": f"urn:uuid:{uuid.uuid4()}", "upstream_manifest": False,
                    "verdict": {"action": "allow", "category": None, "scores": {"sexual": 0.01, "violence": 0.02}}}],
    }  # fmt: skip


MAKERS = {"small": small_record, "full": full_record}


def raw_sqlite_baseline(folder: Path, records: int, batch: int = 64) -> float:
    """Records/s: raw SQLite WAL synchronous=FULL, batches of `batch` small chained records."""
    connection = sqlite3.connect(folder / "raw.sqlite3", isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    connection.execute("CREATE TABLE log (seq INTEGER PRIMARY KEY, id TEXT, body TEXT, prev TEXT, hash TEXT)")
    prev = "0" * 64
    seq = 0
    started = time.perf_counter()
    while seq < records:
        rows = []
        for _ in range(batch):
            seq += 1
            body = json.dumps(small_record(seq), separators=(",", ":"))
            hash_ = hashlib.sha256(f"{prev}{body}".encode()).hexdigest()
            rows.append((seq, f"r{seq}", body, prev, hash_))
            prev = hash_
        connection.execute("BEGIN")
        connection.executemany("INSERT INTO log VALUES (?, ?, ?, ?, ?)", rows)
        connection.execute("COMMIT")
    elapsed = time.perf_counter() - started
    connection.close()
    return seq / elapsed


def chain_cpu_ms(kind: str, n: int = 20000) -> float:
    records = [MAKERS[kind](i) for i in range(n)]
    started = time.perf_counter()
    prev = "0" * 64
    for seq, record in enumerate(records, 1):
        prev = chain_hash(seq, prev, prepare(record).digests_json)
    return (time.perf_counter() - started) / n * 1000


async def store_throughput(store: Any, kind: str, records: int, concurrency: int) -> dict[str, float]:
    make = MAKERS[kind]
    batch_records = [make(i) for i in range(records)]
    latencies: list[float] = []
    await store.start()
    # warm up (tables, connections)
    await asyncio.gather(*(store.append(make(i)) for i in range(200)))
    cursor = iter(batch_records)

    async def worker() -> None:
        for record in cursor:
            started = time.perf_counter()
            await store.append(record)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    single = []
    for i in range(200):
        t = time.perf_counter()
        await store.append(make(i))
        single.append(time.perf_counter() - t)
    report = await store.verify()
    await store.close()
    assert report.ok, report.to_dict()
    latencies.sort()
    return {
        "rate": records / elapsed,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
        "single_ms": statistics.median(single) * 1000,
        "checkpoints": report.checkpoints,
    }


def write_json(
    path: Path, raw: float, rows: list[tuple[str, str, dict[str, float]]], cpu: dict[str, float], postgres: str
) -> None:
    """The printed figures, machine-readable: records/s per store and record shape, and the floors."""
    stores: dict[str, dict[str, dict[str, float]]] = {}
    for store_name, kind, result in rows:
        stores.setdefault(store_name, {})[kind] = result
    results = {
        "raw_sqlite_rps": raw, "issue_raw_sqlite_rps": ISSUE_RAW_SQLITE_RPS, "stores": stores, "chain_cpu_ms": cpu,
        "targets_rps": TARGETS, "postgres": postgres,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))


async def postgres_dsn() -> str | None:
    import asyncpg

    for dsn in filter(None, PG_DSNS):
        try:
            connection = await asyncio.wait_for(asyncpg.connect(dsn), 3)
        except Exception:
            continue
        await connection.close()
        return dsn
    return None


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000, help="records per SQLite run")
    parser.add_argument("--pg-records", type=int, default=50_000, help="records per PostgreSQL run")
    parser.add_argument("--concurrency", type=int, default=512)
    parser.add_argument("--max-batch", type=int, default=256)
    parser.add_argument("--record", choices=["small", "full", "both"], default="both")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    kinds = ["small", "full"] if args.record == "both" else [args.record]
    signer = CheckpointSigner(Ed25519PrivateKey.generate())
    rows: list[tuple[str, str, dict[str, float]]] = []

    from proxy.stores.audit import SqliteAuditStore

    with tempfile.TemporaryDirectory(prefix="imagegate-bench-") as tmp:
        folder = Path(tmp)
        raw = raw_sqlite_baseline(folder, args.records)
        print(f"raw SQLite WAL synchronous=FULL, batches of 64 small chained records: {raw:,.0f} records/s", flush=True)
        for kind in kinds:
            store = SqliteAuditStore(folder / f"audit-{kind}.sqlite3", max_batch=args.max_batch, signer=signer)
            rows.append(("sqlite", kind, await store_throughput(store, kind, args.records, args.concurrency)))
            print(f"sqlite/{kind}: {rows[-1][2]['rate']:,.0f} records/s", flush=True)

    dsn = None if args.no_postgres else await postgres_dsn()
    if dsn is None and not args.no_postgres:
        print("PostgreSQL: no server at 127.0.0.1:5432, skipped")
    if dsn is not None:
        import asyncpg

        from proxy.stores.audit_postgres import PostgresAuditStore

        for kind in kinds:
            schema = f"igbench_{uuid.uuid4().hex[:8]}"
            store = PostgresAuditStore(dsn, schema=schema, max_batch=args.max_batch, signer=signer)
            try:
                rows.append(("postgres", kind, await store_throughput(store, kind, args.pg_records, args.concurrency)))
                print(f"postgres/{kind}: {rows[-1][2]['rate']:,.0f} records/s", flush=True)
            finally:
                connection = await asyncpg.connect(dsn)
                await connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
                await connection.close()

    cpu = {kind: chain_cpu_ms(kind) for kind in kinds}
    if args.json is not None:
        postgres = "measured" if dsn else "skipped: --no-postgres" if args.no_postgres else "skipped: no server at 127.0.0.1:5432"
        write_json(args.json, raw, rows, cpu, postgres)
    print()
    print(f"concurrency {args.concurrency}, max_batch {args.max_batch}, {os.cpu_count()} CPUs")
    scaled = TARGETS["sqlite"] * raw / ISSUE_RAW_SQLITE_RPS
    print(
        f"SQLite target scaled to this machine: 50,000 x {raw:,.0f} / {ISSUE_RAW_SQLITE_RPS:,} = {scaled:,.0f} records/s "
        f"(0.26x the raw floor)"
    )
    header = f"{'store':<9} {'record':<6} {'records/s':>11} {'target':>8} {'vs target':>9} {'vs raw':>7} {'p50 ms':>7} {'p99 ms':>7} {'c=1 ms':>7} {'chain CPU ms/rec':>17}"
    print(header)
    print("-" * len(header))
    print(f"{'raw':<9} {'small':<6} {raw:>11,.0f} {'':>8} {'':>9} {1:>7.2f} {'':>7} {'':>7} {'':>7} {'':>17}")
    for store_name, kind, result in rows:
        target = TARGETS[store_name]
        print(
            f"{store_name:<9} {kind:<6} {result['rate']:>11,.0f} {target:>8,} {result['rate'] / target:>9.2f} "
            f"{result['rate'] / raw:>7.2f} {result['p50_ms']:>7.2f} {result['p99_ms']:>7.2f} {result['single_ms']:>7.2f} {cpu[kind]:>17.4f}"
        )
    print()
    print("chain CPU ms/rec: what the hash chain adds to each request (per-field digests + chain hash, measured alone);")
    print("c=1 ms: one append alone, durable (includes the fsync); p50/p99: append latency under the concurrent load.")


if __name__ == "__main__":
    asyncio.run(main())
