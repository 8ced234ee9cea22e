"""Two real imagegate processes (`python -m proxy.cli serve`) sharing one Redis hold limits together."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import TENANT_KEY, free_port
from tests.proxy.test_limits_stage import post
from tests.proxy.test_limits_store import REDIS_URL, redis_prefix  # noqa: F401 - fixture

pytestmark = [pytest.mark.redis, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
GLOBAL_LIMIT = 20


def config(tmp_path: Path, name: str, port: int, upstream_url: str, prefix: str) -> Path:
    data = {
        "server": {"data_dir": str(tmp_path / name), "port": port, "log_format": "json", "log_level": "warning"},
        "providers": {
            "demo": {"kind": "demo", "models": ["demo"]},
            "openai": {"kind": "openai", "base_url": upstream_url, "api_key_env": "IMAGEGATE_TEST_UPSTREAM_KEY",
                       "models": ["gpt-image-1"], "timeout_s": 10},
        },
        # The CLIP model is not under test here and its weights cannot be downloaded offline.
        "classifier": {"enabled": False, "required": False},
        "tenants": {
            "acme": {
                "api_key_sha256": [hashlib.sha256(TENANT_KEY.encode()).hexdigest()],
                "limits": {
                    "rules": [{"name": "global", "scope": "tenant", "requests": GLOBAL_LIMIT, "window": "1h", "models": ["demo"]}],
                    "budgets": {"user": {"day_usd": 0.05}},
                },
            }
        },
        "limits": {"backend": "redis", "redis_url": REDIS_URL, "key_prefix": prefix},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps(data))
    return path


async def wait_healthy(base: str, process: asyncio.subprocess.Process, deadline_s: float = 120) -> None:
    # Start-up imports torch and open_clip: seconds on a quiet machine, far more on a loaded CI runner.
    started = time.monotonic()
    async with aiohttp.ClientSession() as session:
        while time.monotonic() - started < deadline_s:
            if process.returncode is not None:
                raise RuntimeError(f"imagegate exited with {process.returncode}")
            try:
                async with session.get(base + "/healthz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise TimeoutError("imagegate did not start")


@pytest.fixture
async def replicas(tmp_path: Path, fake_openai, upstream_key: str, redis_prefix: str) -> AsyncIterator[tuple[Any, list[str]]]:  # noqa: F811
    fake, upstream_url = fake_openai
    processes: list[asyncio.subprocess.Process] = []
    bases: list[str] = []
    try:
        for name in ("a", "b"):
            port = free_port()
            log = open(tmp_path / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "proxy.cli", "serve", "--config", str(config(tmp_path, name, port, upstream_url, redis_prefix)),
                cwd=ROOT, stdout=log, stderr=log, env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
            processes.append(process)
            bases.append(f"http://127.0.0.1:{port}")
        for base, process in zip(bases, processes):
            await wait_healthy(base, process)
        yield fake, [base + "/v1" for base in bases]
    finally:
        for process in processes:
            if process.returncode is None:
                process.terminate()
        for process in processes:
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()


async def test_two_processes_allow_exactly_the_global_limit_under_concurrent_load(replicas: tuple[Any, list[str]]) -> None:
    _, (base_a, base_b) = replicas
    body = {"model": "demo", "prompt": "load", "size": "64x64"}
    half = GLOBAL_LIMIT // 2
    connector = aiohttp.TCPConnector(limit=200)
    async with aiohttp.ClientSession(connector=connector) as session:
        # Half the allowance is used on process A alone ...
        first = await asyncio.gather(*[post(session, base_a, body) for _ in range(half)])
        # ... so, under concurrent load on both, exactly the other half is left for A and B together.
        results = await asyncio.gather(*[post(session, (base_a, base_b)[i % 2], body) for i in range(5 * half)])
        last = await asyncio.gather(*[post(session, base_b, body) for _ in range(5)])
    assert [status for status, _, _ in first] == [200] * half
    statuses = [status for status, _, _ in results]
    assert statuses.count(200) == half and statuses.count(429) == 4 * half
    assert [status for status, _, _ in last] == [429] * 5
    for status, headers, body in results + last:
        if status == 429:
            assert body["error"]["code"] == "rate_limit_exceeded" and int(headers["Retry-After"]) >= 1
            assert headers["X-RateLimit-Limit"] == str(GLOBAL_LIMIT) and headers["X-RateLimit-Remaining"] == "0"


async def test_budget_and_idempotency_hold_across_processes(replicas: tuple[Any, list[str]]) -> None:
    fake, (base_a, base_b) = replicas
    body = {"model": "gpt-image-1", "prompt": "a fox", "quality": "low", "size": "1024x1024"}
    async with aiohttp.ClientSession() as session:
        # $0.05 a day; each request holds $0.011006 and costs $0.01093: four fit, whichever process serves them.
        results = await asyncio.gather(*[post(session, (base_a, base_b)[i % 2], body, **{"X-Imagegate-User": "eve"}) for i in range(10)])
        statuses = [status for status, _, _ in results]
        assert statuses.count(200) == 4 and statuses.count(429) == 6
        assert {body["error"]["code"] for status, _, body in results if status == 429} == {"budget_exceeded"}
        for base in (base_a, base_b):
            status, headers, _ = await post(session, base, body, **{"X-Imagegate-User": "eve"})
            assert status == 429 and headers["X-Imagegate-Budget-Remaining-USD"] == f"{0.05 - 4 * 0.01093:.6f}"
        assert len(fake.received) == 4
        # An idempotent retry that lands on the other process is replayed, not generated or charged.
        first = await post(session, base_a, body, **{"X-Imagegate-User": "frank", "Idempotency-Key": "f-1"})
        retry = await post(session, base_b, body, **{"X-Imagegate-User": "frank", "Idempotency-Key": "f-1"})
        third = await post(session, base_b, body, **{"X-Imagegate-User": "frank"})
    assert first[0] == retry[0] == 200 and first[2] == retry[2] and retry[1]["Idempotent-Replayed"] == "true"
    assert retry[1]["X-Imagegate-Cost-USD"] == "0.000000"
    assert third[1]["X-Imagegate-Budget-Remaining-USD"] == f"{0.05 - 2 * 0.01093:.6f}"
    assert len(fake.received) == 6
