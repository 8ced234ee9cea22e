"""The "Done when" durability test, on both stores: `imagegate serve` runs as a real process with the
demo provider, takes concurrent requests, and is killed with SIGKILL mid-load. Afterwards every
request that was acknowledged (its response carried X-Imagegate-Audit-Id) has its record in the
store, and the chain still verifies."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
import yaml

from tests.conftest import TENANT_KEY, digest, free_port
from tests.proxy.audit_backends import Backend, backend  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[2]
KILL_AFTER = 150  # acknowledged requests before the kill
WORKERS = 24


async def wait_until_up(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"imagegate serve exited early:\n{log.read_text()[-3000:]}")
            try:
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    pytest.fail(f"imagegate serve did not come up:\n{log.read_text()[-3000:]}")


@pytest.mark.slow
async def test_no_acknowledged_record_is_lost_when_the_server_is_killed(backend: Backend, tmp_path: Path) -> None:
    port = free_port()
    audit = {**backend.audit_settings(), "purge_interval_s": 0, "checkpoint_every": 50}
    config = tmp_path / "imagegate.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "server": {"data_dir": str(tmp_path / "data"), "port": port, "log_level": "warning"},
                "providers": {"demo": {"kind": "demo", "models": ["demo"]}},
                "default_model": "demo",
                "classifier": {"enabled": False, "required": False},  # no CLIP weights offline
                "tenants": {"acme": {"api_key_sha256": [digest(TENANT_KEY)]}},
                "audit": audit,
            }
        )
    )
    log = tmp_path / "serve.log"
    env = {**os.environ, **backend.env(), "PYTHONPATH": str(ROOT)}
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "proxy.cli", "serve", "--config", str(config)], cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT
        )
    acknowledged: list[str] = []
    killed = asyncio.Event()
    try:
        base = f"http://127.0.0.1:{port}"
        await wait_until_up(f"{base}/healthz", process, log)

        async def worker(session: aiohttp.ClientSession, n: int) -> None:
            i = 0
            while not killed.is_set():
                i += 1
                try:
                    async with session.post(
                        f"{base}/v1/images/generations",
                        json={"model": "demo", "prompt": f"worker {n} request {i}", "size": "16x16"},
                        headers={"Authorization": f"Bearer {TENANT_KEY}"},
                    ) as response:
                        await response.read()
                        audit_id = response.headers.get("X-Imagegate-Audit-Id")
                        if response.status == 200 and audit_id:
                            acknowledged.append(audit_id)
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    return
                if len(acknowledged) >= KILL_AFTER and not killed.is_set():
                    killed.set()
                    os.kill(process.pid, signal.SIGKILL)  # mid-load: the other workers have requests in flight

        connector = aiohttp.TCPConnector(limit=WORKERS)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
            await asyncio.wait_for(asyncio.gather(*(worker(session, n) for n in range(WORKERS))), timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
    assert killed.is_set() and process.returncode == -signal.SIGKILL
    assert len(acknowledged) >= KILL_AFTER

    store = backend.store() if backend.name == "postgres" else None
    if store is None:
        from proxy.stores.audit import SqliteAuditStore

        store = SqliteAuditStore(tmp_path / "data" / "audit.sqlite3")
        backend.stores.append(store)
    await store.start()
    try:
        missing = [audit_id for audit_id in acknowledged if await store.get(audit_id) is None]
        report = await store.verify()
    finally:
        await store.close()
    assert missing == [], f"{len(missing)} acknowledged records lost"
    assert report.ok, report.to_dict()
    assert report.records >= len(acknowledged)
