"""Two real imagegate processes sharing PostgreSQL (audit) and Redis (limits), as deploy/ runs them.

The replicas are `python3 -m proxy.cli serve --config FILE` subprocesses on loopback ports, with the
production stage chain, in front of a fake OpenAI upstream (a thread of this process). A round-robin
client stands in for the load balancer and behaves like deploy/nginx.conf: a request that could not
connect goes to the other replica; a request that was sent and got no answer is never retried (it
may have cost money) and counts as not acknowledged.

What is proven:
- a money budget and a rate limit hold across both replicas (the total accepted is the one
  allowance, not one allowance per replica);
- every request, accepted or refused, has exactly one audit record in the shared store, and the
  two writers keep one unbroken hash chain;
- the probes behave as deploy/kubernetes assumes: a replica that cannot reach Redis answers
  /readyz 503 naming the check while /healthz stays 200, and one whose required classifier model
  is missing from the offline cache stops at start-up with the loader's reason;
- SIGTERM (a pod deletion after its preStop) lets the requests in flight finish and write their
  audit records, refuses new connections meanwhile, and exits 0 within the shutdown timeout;
- deploy/nginx.conf itself (when nginx is installed) spreads requests over both replicas and keeps
  /metrics off the public entry;
- SIGKILL of one replica under load loses no acknowledged audit record (a response is released only
  once its record is durable), and the other replica goes on serving.

The classifier is off here: the CLIP weights cannot be downloaded on a machine without internet,
and tests/classifiers covers the model. Needs the PostgreSQL server at 127.0.0.1:5432 (db `test`,
user `postgres`, trust) and Redis at 127.0.0.1:6379 (database 13); skipped with the reason when
either is down, or when `imagegate serve` does not build the PostgreSQL and Redis stores from the
config. Everything it writes lives in a schema and a key prefix of its own, removed afterwards.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.fakes.openai_upstream import FakeOpenAI

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
PG_DSN = os.environ.get("IMAGEGATE_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
# A database of its own so that other suites' FLUSHDB never touches these counters.
REDIS_URL = os.environ.get("IMAGEGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")
MODEL = "test-model"  # not in the price table: every image costs limits.unknown_model_usd_per_image
USD_PER_IMAGE = 0.25
BUDGET_USD = 2.5  # exactly 10 images a day for tenant `budget`
RATE_LIMIT = 12  # requests per hour for tenant `rate`
KEYS = {tenant: f"ig-multi-{tenant}-key" for tenant in ("budget", "rate", "load")}
START_TIMEOUT_S = 90.0


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the backends ------------------------------------------------------------------------------------


def _postgres_reason() -> str | None:
    try:
        import asyncpg
    except ImportError:
        return "asyncpg is not installed"

    async def probe() -> None:
        connection = await asyncpg.connect(PG_DSN, timeout=3)
        await connection.close()

    try:
        asyncio.run(probe())
    except Exception as exc:  # noqa: BLE001 - any failure means "not here"
        return f"PostgreSQL at {PG_DSN} is not reachable: {type(exc).__name__}: {exc}"
    return None


def _redis_reason() -> str | None:
    try:
        import redis
    except ImportError:
        return "redis (the Python client) is not installed"
    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=3).ping()
    except Exception as exc:  # noqa: BLE001
        return f"Redis at {REDIS_URL} is not reachable: {type(exc).__name__}: {exc}"
    return None


def _scale_out_reason(config: Path, environ: dict[str, str], data_dir: Path) -> str | None:
    """None when `imagegate serve` builds the PostgreSQL audit store and the Redis limit store."""
    from proxy.app import GATEWAY, create_app
    from proxy.settings import load_settings
    from proxy.stages.factory import full_stages

    settings = load_settings(config, environ={**environ, "IMAGEGATE_SERVER__DATA_DIR": str(data_dir)})
    saved = {name: os.environ.get(name) for name in environ}
    os.environ.update(environ)
    try:
        gateway = create_app(settings, stages=full_stages)[GATEWAY]
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    audit = type(gateway.audit).__name__
    if audit != "PostgresAuditStore":
        return f"audit.backend: postgres builds {audit}, not PostgresAuditStore (proxy.app.create_app)"
    limits = next((stage for stage in gateway.pipeline.stages if stage.name == "limits"), None)
    store = type(getattr(limits, "store", None)).__name__
    if store != "RedisLimitStore":
        return f"limits.backend: redis builds {store}, not RedisLimitStore (proxy.stages.factory)"
    return None


# -- the fake upstream, in a thread with its own loop ----------------------------------------------


class ThreadedUpstream:
    def __init__(self, fake: FakeOpenAI) -> None:
        self.fake = fake
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fake-upstream", daemon=True)
        self.runner: Any = None
        self.port = 0

    def start(self) -> str:
        from aiohttp import web

        async def start() -> None:
            self.runner = web.AppRunner(self.fake.app(), access_log=None)
            await self.runner.setup()
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

        self.thread.start()
        asyncio.run_coroutine_threadsafe(start(), self.loop).result(timeout=10)
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        if self.runner is not None:
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


# -- the replicas ------------------------------------------------------------------------------------


@dataclass
class Replica:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@dataclass
class Cluster:
    replicas: list[Replica]
    schema: str
    key_prefix: str
    upstream: FakeOpenAI
    spawn: Callable[..., Replica]  # spawn(name, **env): one more replica (not in `replicas`)
    root: Path


def _wait_ready(replica: Replica) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    last = ""
    while time.monotonic() < deadline:
        if not replica.alive():
            raise RuntimeError(f"{replica.name} exited with {replica.process.returncode}:\n{replica.log_tail()}")
        try:
            with urllib.request.urlopen(replica.base + "/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except Exception as exc:  # noqa: BLE001 - not up yet
            last = str(exc)
        time.sleep(0.3)
    raise RuntimeError(f"{replica.name} not ready after {START_TIMEOUT_S}s ({last}):\n{replica.log_tail()}")


def _checkpoint_key_pem() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return (
        Ed25519PrivateKey.generate()
        .private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        .decode()
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    for reason in (_postgres_reason(), _redis_reason()):
        if reason:
            pytest.skip(reason)
    root = tmp_path_factory.mktemp("multi-replica")
    run_id = uuid.uuid4().hex[:10]
    schema = f"ig_multi_{run_id}"
    key_prefix = f"imagegate-test-{run_id}:"
    fake = FakeOpenAI(delay_s=0.05)
    upstream = ThreadedUpstream(fake)
    upstream_url = upstream.start()
    config = {
        "server": {"host": "127.0.0.1", "log_format": "json", "log_level": "warning"},
        "providers": {
            "upstream": {
                "kind": "openai",
                "base_url": upstream_url,
                "api_key_env": "IMAGEGATE_TEST_UPSTREAM_KEY",
                "models": [MODEL],
                "timeout_s": 20,
            }
        },
        "default_model": MODEL,
        # The CLIP model is not what is under test here (tests/classifiers covers it, and its
        # weights cannot be downloaded on a machine without internet): off, so the stage is skipped.
        "classifier": {"enabled": False, "required": False},
        "tenants": {
            "budget": {
                "api_key_sha256": [_digest(KEYS["budget"])],
                "limits": {"budgets": {"tenant": {"day_usd": BUDGET_USD}}},
            },
            "rate": {
                "api_key_sha256": [_digest(KEYS["rate"])],
                "limits": {"rules": [{"name": "hourly", "scope": "tenant", "requests": RATE_LIMIT, "window": "1h"}]},
            },
            "load": {"api_key_sha256": [_digest(KEYS["load"])]},
        },
        "audit": {
            "backend": "postgres",
            "dsn_env": "IMAGEGATE_AUDIT_DSN",
            "postgres_schema": schema,
            "purge_interval_s": 0,
        },
        "limits": {
            "backend": "redis",
            "redis_url_env": "IMAGEGATE_REDIS_URL",
            "key_prefix": key_prefix,
            "unknown_model_usd_per_image": USD_PER_IMAGE,
            "on_backend_failure": "closed",
        },
    }
    config_path = root / "imagegate.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    environ = {
        "IMAGEGATE_AUDIT_DSN": PG_DSN,
        "IMAGEGATE_REDIS_URL": REDIS_URL,
        # Every replica signs audit checkpoints with the same key, as in deploy/kubernetes.
        "IMAGEGATE_AUDIT_CHECKPOINT_KEY": _checkpoint_key_pem(),
        "IMAGEGATE_TEST_UPSTREAM_KEY": "sk-fake-upstream",
    }
    reason = _scale_out_reason(config_path, environ, root / "probe")
    if reason:
        upstream.stop()
        pytest.skip(f"the scale-out backends are not wired into `imagegate serve` yet: {reason}")

    replicas: list[Replica] = []
    spawned: list[Replica] = []

    def spawn(name: str, **overrides: str) -> Replica:
        log = root / f"{name}.log"
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("IMAGEGATE_")},
            **environ,
            "IMAGEGATE_SERVER__DATA_DIR": str(root / name),
            "PYTHONPATH": str(REPO),
            **overrides,
        }
        port = _free_port()
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "proxy.cli", "serve", "--config", str(config_path), "--port", str(port)],
                cwd=root,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        replica = Replica(name, port, process, log)
        spawned.append(replica)
        return replica

    try:
        replicas = [spawn("replica-1"), spawn("replica-2")]
        for replica in replicas:
            _wait_ready(replica)
        yield Cluster(replicas, schema, key_prefix, fake, spawn, root)
    finally:
        for replica in spawned:
            if replica.alive():
                replica.process.send_signal(signal.SIGTERM)
        for replica in spawned:
            try:
                replica.process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                replica.process.kill()
                replica.process.wait(timeout=10)
        upstream.stop()
        _cleanup(schema, key_prefix)


def _cleanup(schema: str, key_prefix: str) -> None:
    import asyncpg
    import redis

    async def drop() -> None:
        connection = await asyncpg.connect(PG_DSN, timeout=5)
        try:
            await connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        finally:
            await connection.close()

    try:
        asyncio.run(drop())
    except Exception:  # noqa: BLE001 - best effort
        pass
    try:
        client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
        keys = list(client.scan_iter(match=key_prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
    except Exception:  # noqa: BLE001
        pass


# -- the round-robin client --------------------------------------------------------------------------


@dataclass
class Outcome:
    replica: str | None
    status: int | None  # None: no answer (not acknowledged)
    audit_id: str | None
    body: Any
    sent_at: float
    answered_at: float

    @property
    def acknowledged(self) -> bool:
        return self.status is not None

    @property
    def code(self) -> str | None:
        return self.body.get("error", {}).get("code") if isinstance(self.body, dict) else None


class RoundRobin:
    """The load balancer of deploy/nginx.conf in a client: next replica each request; a replica that
    refuses the connection is marked down and the request goes to the next; a request that was sent
    is never retried."""

    def __init__(self, session: aiohttp.ClientSession, replicas: list[Replica]) -> None:
        self.session = session
        self.replicas = replicas
        self.down: set[str] = set()
        self.turn = 0
        self.connect_errors: list[tuple[str, str]] = []
        #: Requests sent to each replica and not answered yet.
        self.in_flight: dict[str, int] = {replica.name: 0 for replica in replicas}

    async def generate(self, tenant: str, prompt: str = "a lighthouse at dawn, oil painting") -> Outcome:
        body = {"model": MODEL, "prompt": prompt, "n": 1, "size": "1024x1024", "response_format": "b64_json"}
        headers = {"Authorization": f"Bearer {KEYS[tenant]}"}
        sent_at = time.monotonic()
        start = self.turn
        self.turn += 1
        for offset in range(len(self.replicas)):  # each replica at most once, starting at this turn's
            replica = self.replicas[(start + offset) % len(self.replicas)]
            if replica.name in self.down:
                continue
            self.in_flight[replica.name] += 1
            try:
                async with self.session.post(replica.base + "/v1/images/generations", json=body, headers=headers) as response:
                    data = await response.read()
                    try:
                        parsed: Any = json.loads(data)
                    except ValueError:
                        parsed = data[:200]
                    return Outcome(
                        replica.name, response.status, response.headers.get("X-Imagegate-Audit-Id"), parsed,
                        sent_at, time.monotonic(),
                    )
            except aiohttp.ClientConnectorError as exc:
                self.down.add(replica.name)  # never reached it: safe to send elsewhere
                self.connect_errors.append((replica.name, f"{type(exc).__name__}: {exc}"))
                continue
            except (aiohttp.ClientError, TimeoutError) as exc:
                return Outcome(replica.name, None, None, f"{type(exc).__name__}: {exc}", sent_at, time.monotonic())
            finally:
                self.in_flight[replica.name] -= 1
        return Outcome(None, None, None, "no replica accepted the connection", sent_at, time.monotonic())


def _session() -> aiohttp.ClientSession:
    # A new connection per request, as a load balancer's failover sees it: after a SIGKILL the dead
    # replica refuses connections instead of a pooled socket failing half-way.
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(force_close=True, limit=64),
        timeout=aiohttp.ClientTimeout(total=30),
    )


async def _send(client: RoundRobin, tenant: str, count: int, concurrency: int) -> list[Outcome]:
    semaphore = asyncio.Semaphore(concurrency)

    async def one() -> Outcome:
        async with semaphore:
            return await client.generate(tenant)

    return list(await asyncio.gather(*(one() for _ in range(count))))


# -- the shared audit store ----------------------------------------------------------------------


async def _audit_rows(schema: str, tenant: str | None = None) -> list[dict[str, Any]]:
    import asyncpg

    connection = await asyncpg.connect(PG_DSN, timeout=5)
    try:
        query = f"SELECT seq, id, tenant, status, prev_hash, hash FROM {schema}.audit_records"
        rows = await (
            connection.fetch(query + " WHERE tenant = $1 ORDER BY seq", tenant)
            if tenant
            else connection.fetch(query + " ORDER BY seq")
        )
        return [dict(row) for row in rows]
    finally:
        await connection.close()


def _assert_one_chain(rows: list[dict[str, Any]]) -> None:
    """Both replicas extended ONE chain: seq 1..N without gaps, each record linked to the previous."""
    assert [row["seq"] for row in rows] == list(range(1, len(rows) + 1)), "gaps or duplicates in the audit seq"
    for previous, row in itertools.pairwise(rows):
        assert row["prev_hash"] == previous["hash"], f"chain broken at seq {row['seq']}"


def _assert_audited_once(outcomes: list[Outcome], rows: list[dict[str, Any]]) -> None:
    ids = [outcome.audit_id for outcome in outcomes]
    assert all(ids), "every answered request carries X-Imagegate-Audit-Id"
    assert len(set(ids)) == len(ids), "audit ids are unique per request"
    stored = [row["id"] for row in rows]
    assert len(stored) == len(set(stored)), "an audit record was written twice"
    assert sorted(stored) == sorted(ids), "every request has exactly one audit record, and nothing else is there"
    by_id = {row["id"]: row for row in rows}
    for outcome in outcomes:
        assert by_id[outcome.audit_id]["status"] == outcome.status


# -- the tests ---------------------------------------------------------------------------------------


async def test_budget_holds_across_replicas(cluster: Cluster) -> None:
    async with _session() as session:
        outcomes = await _send(RoundRobin(session, cluster.replicas), "budget", count=30, concurrency=6)
    accepted = [o for o in outcomes if o.status == 200]
    refused = [o for o in outcomes if o.status == 429]
    assert {o.replica for o in outcomes} == {r.name for r in cluster.replicas}, "both replicas took requests"
    # One budget for the tenant, wherever the request lands: 2.50 USD at 0.25 per image is 10
    # images. Two independent in-memory budgets would have let 20 through.
    assert len(accepted) == round(BUDGET_USD / USD_PER_IMAGE), [(o.replica, o.status, o.code) for o in outcomes]
    assert len(refused) == len(outcomes) - len(accepted)
    assert {o.code for o in refused} == {"budget_exceeded"}
    assert {o.replica for o in refused} == {r.name for r in cluster.replicas}, "both replicas enforce it"
    _assert_audited_once(outcomes, await _audit_rows(cluster.schema, "budget"))


async def test_rate_limit_holds_across_replicas(cluster: Cluster) -> None:
    async with _session() as session:
        outcomes = await _send(RoundRobin(session, cluster.replicas), "rate", count=30, concurrency=6)
    accepted = [o for o in outcomes if o.status == 200]
    refused = [o for o in outcomes if o.status == 429]
    assert len(accepted) == RATE_LIMIT, [(o.replica, o.status, o.code) for o in outcomes]
    assert len(refused) == len(outcomes) - RATE_LIMIT
    assert {o.code for o in refused} == {"rate_limit_exceeded"}
    assert {o.replica for o in refused} == {r.name for r in cluster.replicas}
    _assert_audited_once(outcomes, await _audit_rows(cluster.schema, "rate"))


async def test_one_audit_chain_across_replicas(cluster: Cluster) -> None:
    async with _session() as session:
        outcomes = await _send(RoundRobin(session, cluster.replicas), "load", count=40, concurrency=8)
    assert {o.status for o in outcomes} == {200}
    assert {o.replica for o in outcomes} == {r.name for r in cluster.replicas}
    _assert_audited_once(outcomes, await _audit_rows(cluster.schema, "load"))
    _assert_one_chain(await _audit_rows(cluster.schema))


def _get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


async def test_readiness_follows_the_limit_store_and_liveness_does_not(cluster: Cluster) -> None:
    """The Kubernetes probes: a replica that cannot reach Redis leaves the Service (/readyz 503,
    naming the check) but is not restarted (/healthz 200)."""
    replica = cluster.spawn("replica-no-redis", IMAGEGATE_REDIS_URL=f"redis://127.0.0.1:{_free_port()}/0")
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert replica.alive(), replica.log_tail()
            try:
                health = await asyncio.to_thread(_get, replica.base + "/healthz")
                break
            except OSError:
                assert time.monotonic() < deadline, replica.log_tail()
                await asyncio.sleep(0.3)
        assert health[0] == 200
        status, body = await asyncio.to_thread(_get, replica.base + "/readyz")
        assert status == 503 and body["ready"] is False
        assert body["checks"]["limits"] is False and body["checks"]["audit"] is True, body
    finally:
        replica.process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(replica.process.wait, 40)


async def test_a_replica_without_its_classifier_model_never_listens(cluster: Cluster, tmp_path: Path) -> None:
    """`classifier.required: true` (deploy's configs) and no weights in the offline cache: the
    process stops at start-up with the loader's reason, so the pod never becomes ready."""
    replica = cluster.spawn(
        "replica-no-model",
        IMAGEGATE_CLASSIFIER__ENABLED="true",
        IMAGEGATE_CLASSIFIER__REQUIRED="true",
        HF_HUB_OFFLINE="1",
        HF_HOME=str(tmp_path / "empty-hf-cache"),
    )
    code = await asyncio.to_thread(replica.process.wait, START_TIMEOUT_S)
    assert code != 0
    log = replica.log.read_text(errors="replace")
    assert "the image classifier could not be loaded" in log and "HF_HUB_OFFLINE" in log, log[-2000:]


async def test_sigterm_drains_in_flight_requests_and_writes_their_audit_records(cluster: Cluster) -> None:
    """What a Kubernetes pod deletion does after preStop: SIGTERM with requests waiting upstream.

    The replica stops accepting connections, lets the in-flight requests finish (the upstream takes
    2 s) and write their audit records, then exits 0 within aiohttp's shutdown_timeout (30 s)."""
    replica = cluster.spawn("replica-drain")
    await asyncio.to_thread(_wait_ready, replica)
    received = len(cluster.upstream.received)
    cluster.upstream.delay_s = 2.0
    try:
        async with _session() as session:
            client = RoundRobin(session, [replica])
            tasks = [asyncio.create_task(client.generate("load")) for _ in range(6)]
            deadline = time.monotonic() + 20
            while len(cluster.upstream.received) < received + 6:  # all six are inside, waiting upstream
                assert time.monotonic() < deadline, "the requests never reached the upstream"
                await asyncio.sleep(0.01)
            replica.process.send_signal(signal.SIGTERM)
            terminated_at = time.monotonic()
            # Wait (without sending a request) until the listener is closed, however long the
            # replica takes to handle the signal on a busy machine; then ask as a client would.
            while await _accepts_connections(replica.port):
                assert time.monotonic() - terminated_at < 20, "the replica kept its listener open"
                await asyncio.sleep(0.02)
            closed_at = time.monotonic()
            late = await client.generate("load")  # a new connection while the old ones drain
            outcomes = await asyncio.gather(*tasks)
    finally:
        cluster.upstream.delay_s = 0.05
    code = await asyncio.to_thread(replica.process.wait, 40)
    stopped_after = time.monotonic() - terminated_at
    assert code == 0, replica.log_tail()
    assert stopped_after < 30, f"shutdown took {stopped_after:.1f}s"
    assert [o.status for o in outcomes] == [200] * 6, [(o.status, o.body) for o in outcomes]
    assert all(o.answered_at > terminated_at for o in outcomes), "they were still in flight at SIGTERM"
    assert all(o.answered_at > closed_at for o in outcomes), "the listener closed only after the drain"
    assert late.status is None and late.replica is None, "a draining replica accepts no new connection"
    stored = {row["id"] for row in await _audit_rows(cluster.schema, "load")}
    assert {o.audit_id for o in outcomes} <= stored


async def _accepts_connections(port: int) -> bool:
    """Whether something accepts a TCP connection on the loopback `port` now."""
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    await writer.wait_closed()
    return True


@pytest.fixture(scope="module")
def nginx_front(cluster: Cluster) -> Iterator[str]:
    """deploy/nginx.conf itself, pointed at the two replicas' loopback ports."""
    import shutil

    nginx = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)
    if nginx is None:
        pytest.skip("nginx is not installed (apt-get install nginx-light); the round-robin client covers balancing")
    root = cluster.root / "nginx"
    root.mkdir()
    port = _free_port()
    conf = (REPO / "deploy" / "nginx.conf").read_text()
    for replica, name in zip(cluster.replicas, ("imagegate-1", "imagegate-2")):
        conf = conf.replace(f"server {name}:8080", f"server 127.0.0.1:{replica.port}")
    replacements = {
        "listen 8080;": f"listen 127.0.0.1:{port};",
        "pid /tmp/nginx.pid;": f"pid {root}/nginx.pid;",
        "access_log /dev/stdout upstreams;": f"access_log {root}/access.log upstreams;",
        "error_log /dev/stderr warn;": f"error_log {root}/error.log warn;",
    }
    for old, new in replacements.items():
        assert old in conf, old
        conf = conf.replace(old, new)
    (root / "nginx.conf").write_text(conf)
    directives = "daemon off;" + (" user root;" if os.geteuid() == 0 else "")
    process = subprocess.Popen(
        [nginx, "-p", str(root), "-c", str(root / "nginx.conf"), "-e", str(root / "error.log"), "-g", directives],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            assert process.poll() is None, (root / "error.log").read_text(errors="replace")[-2000:]
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline, "nginx did not open its port"
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=15)


async def test_through_deploy_nginx_conf(cluster: Cluster, nginx_front: str) -> None:
    front = Replica("nginx", int(nginx_front.rsplit(":", 1)[1]), None, cluster.root / "nginx" / "error.log")  # type: ignore[arg-type]
    async with _session() as session:
        outcomes = await _send(RoundRobin(session, [front]), "load", count=24, concurrency=4)
        async with session.get(nginx_front + "/metrics") as response:
            assert response.status == 404, "metrics are scraped per replica, never through the balancer"
        async with session.get(nginx_front + "/readyz") as response:
            assert response.status == 200
    assert [o.status for o in outcomes] == [200] * len(outcomes), [(o.status, o.body) for o in outcomes]
    stored = {row["id"] for row in await _audit_rows(cluster.schema, "load")}
    assert {o.audit_id for o in outcomes} <= stored
    access = (cluster.root / "nginx" / "access.log").read_text()
    used = {int(port) for port in re.findall(r"upstream=127\.0\.0\.1:(\d+)", access)}
    assert used == {replica.port for replica in cluster.replicas}, "nginx spread the requests over both replicas"


async def test_sigkill_of_one_replica_loses_no_acknowledged_record(cluster: Cluster) -> None:
    """Runs last: it kills replica-2."""
    survivor, victim = cluster.replicas
    before = {row["id"] for row in await _audit_rows(cluster.schema, "load")}
    outcomes: list[Outcome] = []
    killed_at: float | None = None
    deadline = time.monotonic() + 60

    async with _session() as session:
        client = RoundRobin(session, cluster.replicas)

        async def worker() -> None:
            while len(outcomes) < 200 and time.monotonic() < deadline:
                outcomes.append(await client.generate("load"))

        async def killer() -> None:
            nonlocal killed_at
            # Mid-load: once the victim has answered some requests and is working on others.
            while (
                sum(o.replica == victim.name and o.acknowledged for o in outcomes) < 15
                or client.in_flight[victim.name] < 2
            ):
                assert time.monotonic() < deadline, "the victim never got load"
                await asyncio.sleep(0.01)
            os.kill(victim.process.pid, signal.SIGKILL)
            killed_at = time.monotonic()

        await asyncio.gather(killer(), *(worker() for _ in range(8)))
    victim.process.wait(timeout=10)
    assert killed_at is not None

    acknowledged = [o for o in outcomes if o.acknowledged]
    lost = [o for o in outcomes if not o.acknowledged]
    assert {o.status for o in acknowledged} == {200}, {o.status for o in acknowledged}
    assert any(o.replica == victim.name for o in acknowledged)
    after_kill = [o for o in acknowledged if o.sent_at > killed_at]
    assert after_kill and {o.replica for o in after_kill} == {survivor.name}, "the survivor took over"
    assert all(o.replica == victim.name for o in lost), (client.connect_errors, [(o.replica, o.body) for o in lost if o.replica != victim.name])

    rows = await _audit_rows(cluster.schema, "load")
    stored = {row["id"] for row in rows} - before
    print(
        f"\nSIGKILL mid-load: {len(outcomes)} requests, {len(acknowledged)} acknowledged "
        f"({sum(o.replica == victim.name for o in acknowledged)} by the victim), {len(lost)} cut off by the kill, "
        f"{len(stored)} new audit records"
    )
    missing = [o.audit_id for o in acknowledged if o.audit_id not in stored]
    assert not missing, f"{len(missing)} acknowledged requests have no audit record: {missing[:5]}"
    # Records beyond the acknowledged ones can only belong to requests cut off by the kill
    # (durable, but the answer never left the process).
    assert len(stored) - len(acknowledged) <= len(lost)
    # The killed writer left no gap and no fork in the shared chain.
    _assert_one_chain(await _audit_rows(cluster.schema))

    async with _session() as session, session.get(survivor.base + "/readyz") as response:
        assert response.status == 200
