"""What one imagegate replica sustains with the scale-out backends, and what a second one adds.

Starts a fake OpenAI upstream (answers at once with a small PNG) and N `imagegate serve` processes
with the production stage chain (the classifier off: bench/bench_classifier.py measures it), the PostgreSQL audit store and the Redis limit store (a tenant with
a rate rule and budgets high enough never to refuse, so every request does the real Redis work),
then sends image generations round-robin at a fixed concurrency and prints throughput and latency.
Scenarios: 1 replica on SQLite + in-memory limits (the embedded default), 1 replica on
PostgreSQL + Redis, 2 replicas on PostgreSQL + Redis.

    python3 deploy/bench_scaleout.py [--requests 600] [--concurrency 32]

Everything (client, upstream, replicas, PostgreSQL, Redis) shares this machine's cores, so two
replicas on a 2-core machine show the cost of the shared stores, not the gain of a second machine.
Figures are for deploy/SIZING.md; this script never asserts on timings and is not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
PG_DSN = os.environ.get("IMAGEGATE_BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("IMAGEGATE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
KEY = "ig-bench-scaleout-key"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_upstream(port: int) -> None:
    import base64
    import io

    from aiohttp import web
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (30, 120, 200)).save(buffer, format="PNG")
    payload = {"created": 0, "data": [{"b64_json": base64.b64encode(buffer.getvalue()).decode()}]}

    async def images(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response(payload)

    app = web.Application()
    app.router.add_post("/v1/images/generations", images)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def config(upstream: int, scaled: bool, schema: str, prefix: str) -> dict[str, Any]:
    data: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "log_level": "warning", "log_format": "json"},
        "providers": {
            "upstream": {"kind": "openai", "base_url": f"http://127.0.0.1:{upstream}/v1", "models": ["bench-model"]}
        },
        "default_model": "bench-model",
        # Classification is measured on its own (bench/bench_classifier.py): off here, and its
        # weights are not downloadable on a machine without internet.
        "classifier": {"enabled": False, "required": False},
        "tenants": {
            "bench": {
                "api_key_sha256": [hashlib.sha256(KEY.encode()).hexdigest()],
                "audit_prompts": "hash",
                "limits": {
                    "rules": [{"name": "per-user", "scope": "user", "requests": 10_000_000, "window": "1m"}],
                    "budgets": {"tenant": {"day_usd": 1e9}, "user": {"day_usd": 1e9}},
                },
            }
        },
        "limits": {"unknown_model_usd_per_image": 0.01},
        "audit": {"purge_interval_s": 0},
    }
    if scaled:
        data["audit"].update(backend="postgres", dsn_env="IMAGEGATE_AUDIT_DSN", postgres_schema=schema)
        data["limits"].update(backend="redis", redis_url_env="IMAGEGATE_REDIS_URL", key_prefix=prefix)
    return data


def start_replicas(count: int, config_path: Path, root: Path) -> list[tuple[subprocess.Popen[bytes], int]]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    replicas = []
    for index in range(count):
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEGATE_")}
        env.update(
            IMAGEGATE_AUDIT_DSN=PG_DSN,
            IMAGEGATE_REDIS_URL=REDIS_URL,
            IMAGEGATE_AUDIT_CHECKPOINT_KEY=pem,
            IMAGEGATE_SERVER__DATA_DIR=str(root / f"replica-{index}"),
            PYTHONPATH=str(REPO),
        )
        log = (root / f"replica-{index}.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "proxy.cli", "serve", "--config", str(config_path), "--port", str(port)],
            env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT,
        )
        replicas.append((process, port))
    for process, port in replicas:
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None:
                raise SystemExit(f"replica on {port} exited; see {root}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
                    if response.status == 200:
                        break
            except Exception:  # noqa: BLE001 - not up yet
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"replica on {port} not ready; see {root}")
            time.sleep(0.3)
    return replicas


async def load(ports: list[int], requests: int, concurrency: int) -> tuple[float, list[float], int]:
    import aiohttp

    body = {"model": "bench-model", "prompt": "a lighthouse at dawn", "response_format": "b64_json"}
    headers = {"Authorization": f"Bearer {KEY}", "X-Imagegate-User": "bench-user"}
    latencies: list[float] = []
    errors = 0
    turn = 0
    remaining = requests

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def worker() -> None:
            nonlocal turn, remaining, errors
            while remaining > 0:
                remaining -= 1
                port = ports[turn % len(ports)]
                turn += 1
                started = time.perf_counter()
                async with session.post(f"http://127.0.0.1:{port}/v1/images/generations", json=body, headers=headers) as r:
                    await r.read()
                    if r.status != 200:
                        errors += 1
                latencies.append(time.perf_counter() - started)

        # warm-up
        warm = remaining
        remaining = min(100, requests)
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        latencies.clear()
        errors = 0
        remaining = warm
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return requests / elapsed, latencies, errors


def cleanup(schema: str, prefix: str) -> None:
    import asyncpg
    import redis

    async def drop() -> None:
        connection = await asyncpg.connect(PG_DSN)
        rows, row_bytes, table_bytes = await connection.fetchrow(
            f"SELECT count(*), avg(pg_column_size(t.*))::int, pg_total_relation_size('{schema}.audit_records')"
            f" FROM {schema}.audit_records t"
        )
        print(f"audit_records: {rows} rows, {row_bytes} B per row on average, {table_bytes / max(rows, 1):.0f} B per row with indexes")
        await connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await connection.close()

    asyncio.run(drop())
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    if keys:
        client.delete(*keys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()

    upstream = free_port()
    context = multiprocessing.get_context("spawn")
    upstream_process = context.Process(target=run_upstream, args=(upstream,), daemon=True)
    upstream_process.start()
    rows = []
    scenarios = [("1 replica, SQLite + memory", 1, False), ("1 replica, PostgreSQL + Redis", 1, True), ("2 replicas, PostgreSQL + Redis", 2, True)]
    for label, count, scaled in scenarios:
        run = uuid.uuid4().hex[:8]
        schema, prefix = f"ig_bench_{run}", f"imagegate-bench-{run}:"
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            path = root / "imagegate.yaml"
            path.write_text(yaml.safe_dump(config(upstream, scaled, schema, prefix)))
            replicas = start_replicas(count, path, root)
            try:
                rate, latencies, errors = asyncio.run(load([port for _, port in replicas], args.requests, args.concurrency))
            finally:
                for process, _ in replicas:
                    process.terminate()
                for process, _ in replicas:
                    process.wait(timeout=40)
                if scaled:
                    cleanup(schema, prefix)
        latencies.sort()
        p95, p99 = (latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 for q in (0.95, 0.99))
        rows.append((label, rate, statistics.median(latencies) * 1000, p95, p99, errors))
    upstream_process.terminate()
    load_average = os.getloadavg()[0]
    print(f"\nimagegate replicas, production chain with the classifier off, {args.requests} requests, "
          f"concurrency {args.concurrency}, {os.cpu_count()} CPUs shared by everything, load average {load_average:.1f}")
    print(f"{'scenario':34} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for label, rate, p50, p95, p99, errors in rows:
        print(f"{label:34} {rate:8.0f} {p50:8.1f} {p95:8.1f} {p99:8.1f} {errors:7d}")


if __name__ == "__main__":
    main()
