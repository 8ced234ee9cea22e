"""Latency imagegate adds over calling the upstream directly, against a bare pass-through proxy.

Three servers run in their own processes on loopback: a fake OpenAI upstream answering at once with
a small base64 PNG, a bare aiohttp pass-through proxy (reads the body, forwards it, returns the
answer: the floor any proxy pays), and imagegate (authentication, parsing, the stage chain, base64
decode and re-encode, and the durable SQLite audit write with synchronous=FULL). The client sends
the same image-generation request to each at concurrency 1, 64 and 256 and prints p50/p95/p99, the
latency added over the direct call and the throughput: `thru/s` is requests completed per second of
wall time; `req/s` is the older estimate, concurrency divided by the mean latency.

    python bench/bench_latency.py [--requests 2000] [--concurrency 1 64 256] [--stages core|policy]
                                  [--json PATH]

`--stages policy` adds the stages that are cheap per request (prompt filter, licence, limits) when
their libraries are installed; classification and signing have benchmarks of their own.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import multiprocessing
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KEY = "sk-bench-key"
#: Listen backlog of all three servers: at concurrency 256 the first burst of connections overflows
#: aiohttp's default of 128, and a dropped SYN is retried after a second, which would show up as a
#: p99 of 1 s that no server caused.
BACKLOG = 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def small_png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 120, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def run_upstream(port: int) -> None:
    from aiohttp import web

    body = json.dumps(
        {"created": 1, "data": [{"b64_json": base64.b64encode(small_png()).decode()}], "usage": {"total_tokens": 1}}
    ).encode()

    async def images(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/images/generations", images)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, backlog=BACKLOG)


def run_bare_proxy(port: int, upstream: int) -> None:
    import aiohttp
    from aiohttp import web

    async def session_ctx(app: web.Application):  # type: ignore[no-untyped-def]
        # No connection cap, like imagegate's upstream session: aiohttp's default of 100 would queue
        # the bare proxy's requests at concurrency 256 and make the floor look slower than it is.
        app["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        yield
        await app["session"].close()

    async def forward(request: web.Request) -> web.Response:
        body = await request.read()
        async with request.app["session"].post(
            f"http://127.0.0.1:{upstream}{request.path}", data=body, headers={"Content-Type": "application/json"}
        ) as response:
            return web.Response(body=await response.read(), status=response.status, content_type="application/json")

    app = web.Application()
    app.cleanup_ctx.append(session_ctx)
    app.router.add_post("/v1/{tail:.*}", forward)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, backlog=BACKLOG)


def run_imagegate(port: int, upstream: int, data_dir: str, stages: str) -> None:
    from aiohttp import web

    from proxy.app import create_app, default_stages
    from proxy.logs import configure_logging
    from proxy.settings import Settings
    from proxy.stages.authenticate import key_digest

    configure_logging("error", "json")
    settings = Settings.model_validate(
        {
            "server": {"data_dir": data_dir},
            "providers": {
                "openai": {"kind": "openai", "base_url": f"http://127.0.0.1:{upstream}/v1", "models": ["gpt-image-1"]}
            },
            "tenants": {"bench": {"api_key_sha256": [key_digest(KEY)]}},
        }
    )
    factory = default_stages
    if stages == "policy":
        from proxy.stages.factory import policy_stages

        factory = policy_stages
    web.run_app(create_app(settings, stages=factory), host="127.0.0.1", port=port, print=None, access_log=None, backlog=BACKLOG,
                handler_cancellation=False)


async def wait_ready(port: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise RuntimeError(f"server on port {port} did not start")


async def measure(url: str, requests: int, concurrency: int) -> tuple[list[float], float]:
    """Per-request latencies (seconds) and the wall time the measured requests took together."""
    import aiohttp

    payload = json.dumps({"model": "gpt-image-1", "prompt": "a lighthouse on a cliff at sunrise", "n": 1}).encode()
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def one() -> None:
            started = time.perf_counter()
            async with session.post(url, data=payload, headers=headers) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"{url}: HTTP {response.status}: {await response.text()}")
            latencies.append(time.perf_counter() - started)

        for _ in range(min(50, requests)):  # warm-up: connections, caches, SQLite pages
            await one()
        latencies.clear()
        remaining = requests
        started = time.perf_counter()

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await one()

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return latencies, elapsed


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main(args: argparse.Namespace) -> dict[str, Any]:
    upstream, bare, gate = free_port(), free_port(), free_port()
    data_dir = tempfile.mkdtemp(prefix="imagegate-bench-", dir=args.data_dir)
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=run_upstream, args=(upstream,), daemon=True),
        context.Process(target=run_bare_proxy, args=(bare, upstream), daemon=True),
        context.Process(target=run_imagegate, args=(gate, upstream, data_dir, args.stages), daemon=True),
    ]
    for process in processes:
        process.start()
    try:
        for port in (upstream, bare, gate):
            await wait_ready(port)
        targets = {
            "direct upstream": f"http://127.0.0.1:{upstream}/v1/images/generations",
            "bare aiohttp proxy": f"http://127.0.0.1:{bare}/v1/images/generations",
            "imagegate": f"http://127.0.0.1:{gate}/v1/images/generations",
        }
        results: dict[str, Any] = {}
        for concurrency in args.concurrency:
            rows = {}
            # Interleave rounds so drift on a shared machine hits every target alike.
            samples: dict[str, list[float]] = {name: [] for name in targets}
            wall: dict[str, float] = {name: 0.0 for name in targets}
            rounds = 4
            for _ in range(rounds):
                for name, url in targets.items():
                    latencies, elapsed = await measure(url, max(1, args.requests // rounds), concurrency)
                    samples[name] += latencies
                    wall[name] += elapsed
            for name, values in samples.items():
                rows[name] = {
                    "p50_ms": percentile(values, 0.50) * 1000,
                    "p95_ms": percentile(values, 0.95) * 1000,
                    "p99_ms": percentile(values, 0.99) * 1000,
                    "mean_ms": statistics.fmean(values) * 1000,
                    "rps": len(values) / sum(values) * concurrency,
                    # Requests completed per second of wall time: the throughput at this concurrency.
                    "throughput_rps": len(values) / wall[name],
                }
            direct = rows["direct upstream"]
            for name in ("bare aiohttp proxy", "imagegate"):
                rows[name]["added_p50_ms"] = rows[name]["p50_ms"] - direct["p50_ms"]
                rows[name]["added_p95_ms"] = rows[name]["p95_ms"] - direct["p95_ms"]
                rows[name]["added_p99_ms"] = rows[name]["p99_ms"] - direct["p99_ms"]
            results[str(concurrency)] = rows
        return results
    finally:
        for process in processes:
            process.terminate()
            process.join(timeout=5)


def print_table(results: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"\nimagegate added latency, {args.requests} requests per target, stages={args.stages}, {os.cpu_count()} CPUs")
    print(f"{'conc':>4}  {'target':<20} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'added p50':>10} {'added p99':>10} {'req/s':>8} {'thru/s':>8}")
    for concurrency, rows in results.items():
        for name, row in rows.items():
            added50 = f"{row['added_p50_ms']:.3f}" if "added_p50_ms" in row else "-"
            added99 = f"{row['added_p99_ms']:.3f}" if "added_p99_ms" in row else "-"
            print(f"{concurrency:>4}  {name:<20} {row['p50_ms']:8.3f} {row['p95_ms']:8.3f} {row['p99_ms']:8.3f} {added50:>10} {added99:>10} {row['rps']:8.0f} {row['throughput_rps']:8.0f}")
        bare, gate = rows["bare aiohttp proxy"], rows["imagegate"]
        print(f"      imagegate added p50 minus bare proxy added p50: {gate['added_p50_ms'] - bare['added_p50_ms']:.3f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 64, 256])
    parser.add_argument("--stages", choices=["core", "policy"], default="core")
    parser.add_argument("--data-dir", default=None, help="where the SQLite audit file goes (default: a temp folder)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    arguments = parser.parse_args()
    output = asyncio.run(main(arguments))
    print_table(output, arguments)
    if arguments.json:
        arguments.json.parent.mkdir(parents=True, exist_ok=True)
        arguments.json.write_text(json.dumps(output, indent=2))
