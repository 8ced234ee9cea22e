"""Issue 11, item 3: every fault, each a test, each proving the same four properties.

For every fault the production chain (`full_stages`: limits, licence, prompt filter, a real open_clip
classifier with tiny random weights, C2PA signing with the development certificate) runs on a real
port, and the test checks:

1. the client gets a clear error in OpenAI's shape (`{"error": {message, type, code, param}}`);
2. the request has an audit record, read back as a compliance officer would (`GET
   /v1/audit/records/{id}` with an admin key); for faults of the audit store itself, where no record
   can exist, the refusal is counted and no record is acknowledged that the store does not hold;
3. no unclassified or unsigned image reaches the client (and, where the config says fail open, the
   image is released and its audit record says which stage failed open);
4. the SAME running gateway serves the next request normally once the fault is gone: 200, an image
   that was classified and carries a valid C2PA manifest naming its audit record, and that record.

Faults are real where they can be: a fake provider that times out, fails, resets half-way or sends a
truncated image; raw sockets that send slowly or hang up; a TCP forwarder cut between imagegate and
the real Redis and PostgreSQL servers (the shared servers are never touched); SQLite's own
`max_page_count` limit standing in for a full disk. Only the classifier and the signer are made to
fail by swapping one method of the live object for one that raises, and swapping it back.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict

from proxy.app import GATEWAY, Gateway, create_app
from proxy.settings import Settings
from proxy.stages.factory import full_stages
from proxy.stores.audit import AuditQuery
from tests.classifiers.conftest import TINY_ARCHITECTURE, TinyModels, tiny_models  # noqa: F401  (fixture)
from tests.conftest import ADMIN_KEY, TENANT_KEY, make_settings
from tests.fakes.openai_upstream import FakeOpenAI
from tests.reliability.faultkit import RawClient, TcpForwarder, failing, request_head, sqlite_disk_full

AUTH = {"Authorization": f"Bearer {TENANT_KEY}"}
PROMPT = {"model": "gpt-image-1", "prompt": "a lighthouse at dawn"}
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
#: A budget big enough never to refuse, so that what it has spent can be read from the headers.
BUDGET = {"tenant": {"day_usd": 100}}


# -- the gateway under test -------------------------------------------------------------------------


def classifier_section(models: TinyModels) -> dict[str, Any]:
    """The tiny classifier, really run on every image; no category fires, so images are allowed."""
    return {
        "enabled": True,
        "required": True,
        "model": TINY_ARCHITECTURE,
        "pretrained": None,
        "checkpoint": str(models.checkpoint),
        "concepts": {
            "disabled_categories": ["minors", "violence", "self_harm", "hate", "weapons", "drugs"],
            "threshold_offsets": {"sexual": 10.0},
        },
    }


@dataclass
class Rig:
    """One running gateway with its fake upstream."""

    app: web.Application
    port: int
    fake: FakeOpenAI

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def gateway(self) -> Gateway:
        return self.app[GATEWAY]

    def stage(self, name: str) -> Any:
        return next(stage for stage in self.gateway.pipeline.stages if stage.name == name)


def with_tenant_limits(settings: Settings, policy: dict[str, Any]) -> Settings:
    tenants = dict(settings.tenants)
    tenants["acme"] = tenants["acme"].model_copy(update={"limits": policy})
    return settings.model_copy(update={"tenants": tenants})


@pytest.fixture
async def rig_factory(tmp_path: Path, fake_openai, upstream_key: str, tiny_models: TinyModels) -> AsyncIterator[Any]:
    """Starts gateways on real ports. `served=True` runs it as `imagegate serve` does (aiohttp never
    cancels a handler whose client hung up); otherwise as aiohttp's test server does (it cancels)."""
    fake, upstream_url = fake_openai
    runners: list[web.AppRunner] = []

    async def start(
        *, timeout_s: float = 5.0, tenant_limits: dict[str, Any] | None = None, served: bool = False, **overrides: Any
    ) -> Rig:
        settings = make_settings(tmp_path, upstream_url, classifier=classifier_section(tiny_models), **overrides)
        provider = settings.providers["openai"].model_copy(update={"timeout_s": timeout_s})
        settings = settings.model_copy(update={"providers": {**settings.providers, "openai": provider}})
        if tenant_limits is not None:
            settings = with_tenant_limits(settings, tenant_limits)
        app = create_app(settings, stages=full_stages)
        runner = web.AppRunner(app, handler_cancellation=not served, access_log=None)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return Rig(app, int(runner.addresses[0][1]), fake)

    yield start
    for runner in runners:
        await runner.cleanup()


# -- talking to it ------------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    body: dict[str, Any]
    headers: CIMultiDict[str]

    @property
    def audit_id(self) -> str:
        audit_id = self.headers.get("X-Imagegate-Audit-Id")
        assert audit_id, "every answer names its audit record"
        return audit_id


async def generate(rig: Rig, payload: dict[str, Any] | None = None) -> Answer:
    async with aiohttp.ClientSession() as session:
        async with session.post(rig.base + "/images/generations", json=payload or PROMPT, headers=AUTH) as response:
            return Answer(response.status, await response.json(content_type=None), CIMultiDict(response.headers))


async def audit_record(rig: Rig, audit_id: str) -> dict[str, Any] | None:
    """The record as a compliance officer reads it, or None when the gateway holds none."""
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{rig.base}/audit/records/{audit_id}", headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as response:
            if response.status == 404:
                return None
            assert response.status == 200, await response.text()
            return await response.json()  # type: ignore[no-any-return]


# -- the four properties -------------------------------------------------------------------------------


def assert_clear_error(answer: Answer, status: int, code: str) -> None:
    """Property 1: the provider's error shape, a code the SDK exposes, a message a person can act on."""
    assert answer.status == status, answer.body
    assert set(answer.body) == {"error"}, answer.body
    error = answer.body["error"]
    assert error["code"] == code and error["type"] and len(error["message"]) > 20
    assert "Traceback" not in error["message"]


def assert_no_image(answer: Answer) -> None:
    """Property 3 on the wire: nothing that could be an image left the gateway."""
    text = json.dumps(answer.body)
    assert "b64_json" not in text and '"url"' not in text and "data" not in answer.body


async def assert_audited_refusal(rig: Rig, answer: Answer, status: int, code: str) -> dict[str, Any]:
    """Property 2 and 3 in the trail: the record exists, says why, and released no image."""
    record = await audit_record(rig, answer.audit_id)
    assert record is not None, "the refused request must have an audit record"
    assert record["status"] == status and record["error"]["code"] == code
    assert record["outcome"] in ("error", "rejected")
    assert not any(image["released"] for image in record.get("images", []))
    return record


def decisions_of(record: dict[str, Any], stage: str) -> list[dict[str, Any]]:
    return [decision for decision in record["decisions"] if decision["stage"] == stage]


async def verify_released(images: list[bytes]) -> list[Any]:
    from provenance import verify_image

    return [await asyncio.to_thread(verify_image, image) for image in images]


async def assert_moderated_release(rig: Rig, answer: Answer) -> dict[str, Any]:
    """A 200 whose every image was classified and carries a valid manifest naming its record."""
    assert answer.status == 200, answer.body
    images = [base64.b64decode(item["b64_json"]) for item in answer.body["data"]]
    assert images
    record = await audit_record(rig, answer.audit_id)
    assert record is not None and record["status"] == 200
    assert all(image["released"] and image["verdict"] for image in record["images"])
    assert len(decisions_of(record, "output_classifier")) == len(images)
    for report in await verify_released(images):
        assert report.has_credentials and report.state in ("valid", "trusted"), report.failures
        assert report.imagegate is not None and report.imagegate.get("audit_id") == answer.audit_id
    return record


async def assert_recovers(rig: Rig) -> dict[str, Any]:
    """Property 4: the same running gateway serves the next request normally."""
    answer = await generate(rig)
    record = await assert_moderated_release(rig, answer)
    assert record["outcome"] == "allow"
    return record


# -- upstream faults ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [
        pytest.param("silence", 504, "upstream_timeout", id="timeout-no-answer"),
        pytest.param("drip", 504, "upstream_timeout", id="timeout-answer-trickles"),
        pytest.param("server_error", 502, "upstream_error", id="5xx"),
        pytest.param("reset_mid_body", 502, "upstream_connection_error", id="reset-mid-body"),
        pytest.param("truncated_image", 502, "upstream_bad_response", id="truncated-image"),
    ],
)
async def test_upstream_fault(rig_factory, fault: str, status: int, code: str) -> None:
    rig = await rig_factory(timeout_s=0.6)
    if fault == "silence":
        rig.fake.delay_s = 1.5
    else:
        rig.fake.fault = fault
        rig.fake.drip_s = 0.2

    answer = await generate(rig)
    assert_clear_error(answer, status, code)
    assert_no_image(answer)
    record = await assert_audited_refusal(rig, answer, status, code)
    assert record["provider"] == "openai" and len(rig.fake.received) == 1
    assert all(image["manifest_id"] is None for image in record.get("images", [])), "nothing was signed"

    rig.fake.delay_s, rig.fake.fault = 0.0, None
    await assert_recovers(rig)


# -- safety stages that fail ----------------------------------------------------------------------------


def break_classifier(rig: Rig) -> AbstractContextManager[list[int]]:
    """The model itself raises on every batch, as a GPU that ran out of memory does."""
    runner = rig.stage("output_classifier").service.runner
    assert runner is not None, "the classifier must be loaded for this test"
    # The runner decodes ahead (`prepare_outcome`) and runs the model on whole batches here:
    return failing(runner.classifier, "classify_prepared", lambda: RuntimeError("CUDA error: out of memory"))


def break_signer(rig: Rig) -> AbstractContextManager[list[int]]:
    """The signer raises on every image, as a remote signing service that stopped answering does."""
    from provenance import SigningError

    signer = rig.stage("provenance").signer
    assert signer is not None
    return failing(signer, "sign", lambda: SigningError("the remote signing service did not answer"))


BREAKERS: dict[str, Callable[[Rig], AbstractContextManager[list[int]]]] = {
    "output_classifier": break_classifier,
    "provenance": break_signer,
}


@pytest.mark.parametrize("stage", ["output_classifier", "provenance"], ids=["classifier-raises", "signer-fails"])
async def test_safety_stage_failure_fails_closed(rig_factory, stage: str) -> None:
    rig = await rig_factory()
    with BREAKERS[stage](rig) as calls:
        answer = await generate(rig)
    assert calls[0] >= 1, "the fault was never hit"
    assert_clear_error(answer, 503, "moderation_unavailable")
    assert_no_image(answer)
    record = await assert_audited_refusal(rig, answer, 503, "moderation_unavailable")
    failed = [d for d in decisions_of(record, stage) if d["action"] == "error"]
    assert failed and failed[0]["details"]["fail_open"] is False
    assert record["images"] and all(image["manifest_id"] is None for image in record["images"])

    await assert_recovers(rig)


@pytest.mark.parametrize("stage", ["output_classifier", "provenance"], ids=["classifier-raises", "signer-fails"])
async def test_safety_stage_failure_fails_open_only_when_configured(rig_factory, stage: str) -> None:
    rig = await rig_factory(failure_policy={stage: "open"})
    with BREAKERS[stage](rig) as calls:
        answer = await generate(rig)
    assert calls[0] >= 1, "the fault was never hit"
    # Released, because the config says so, and the trail says exactly which stage was skipped.
    assert answer.status == 200 and len(answer.body["data"]) == 1
    assert answer.headers["X-Imagegate-Outcome"] == "error"
    record = await audit_record(rig, answer.audit_id)
    assert record is not None and record["status"] == 200 and record["images"][0]["released"]
    failed = [d for d in decisions_of(record, stage) if d["action"] == "error"]
    assert len(failed) == 1 and failed[0]["details"]["fail_open"] is True
    (report,) = await verify_released([base64.b64decode(answer.body["data"][0]["b64_json"])])
    if stage == "provenance":  # released unsigned, and the record says so
        assert not report.has_credentials and record["images"][0]["manifest_id"] is None
    else:  # released unclassified, still signed, and the manifest too says the classifier failed
        assert report.has_credentials and record["images"][0]["verdict"] is None
        assert report.imagegate is not None
        assert any(v["stage"] == stage and v["action"] == "error" for v in report.imagegate["verdicts"])

    await assert_recovers(rig)


# -- clients that misbehave --------------------------------------------------------------------------


async def record_of_request(rig: Rig, request_id: str, *, wait_s: float = 10.0) -> dict[str, Any]:
    """The audit record of a request whose client never saw an answer (found by its request id).
    Waits for it: the gateway finishes such an exchange after the client has gone."""
    deadline = asyncio.get_running_loop().time() + wait_s
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as session:
        while True:
            async with session.get(f"{rig.base}/audit/records", params={"order": "desc", "limit": "50"}) as response:
                assert response.status == 200
                found = [r for r in (await response.json())["data"] if r["request_id"] == request_id]
            if found:
                return found[0]  # type: ignore[no-any-return]
            assert asyncio.get_running_loop().time() < deadline, f"no audit record for {request_id}"
            await asyncio.sleep(0.05)


async def in_flight(rig: Rig) -> float:
    async with aiohttp.ClientSession() as session:
        async with session.get(rig.base.removesuffix("/v1") + "/metrics") as response:
            text = await response.text()
    line = next(line for line in text.splitlines() if line.startswith("imagegate_requests_in_flight "))
    return float(line.split()[1])


async def assert_budget_settled(rig: Rig, earlier: list[dict[str, Any]]) -> None:
    """Property 4 plus "no leaked hold": the next request succeeds, and the budget it reports has been
    charged exactly the actual costs in the trail (a hold left in place would show as more)."""
    answer = await generate(rig)
    record = await assert_moderated_release(rig, answer)
    spent = sum(r["cost_usd"] or 0.0 for r in [*earlier, record])
    remaining = float(answer.headers["X-Imagegate-Budget-Remaining-USD"])
    assert remaining == pytest.approx(BUDGET["tenant"]["day_usd"] - spent, abs=1e-6)
    assert await in_flight(rig) == 0


def raw_generation(request_id: str, body: bytes) -> bytes:
    headers = {**AUTH, "Content-Type": "application/json", "X-Request-Id": request_id}
    return request_head("/v1/images/generations", headers, len(body))


def assert_disconnect_recorded(record: dict[str, Any]) -> None:
    """The client is gone, so nobody reads an error; the trail must still say what happened."""
    assert record["status"] == 499
    assert record["error"]["code"] == "client_disconnected" and record["error"]["type"] and record["error"]["message"]
    assert not any(image["released"] for image in record.get("images", []))


SERVER_MODES = [pytest.param(False, id="handler-cancelled"), pytest.param(True, id="as-imagegate-serve")]


@pytest.mark.parametrize("served", SERVER_MODES)
async def test_client_disconnects_mid_body(rig_factory, served: bool) -> None:
    rig = await rig_factory(tenant_limits={"budgets": BUDGET}, served=served)
    body = json.dumps(PROMPT).encode()
    request_id = f"req-gone-mid-body-{uuid.uuid4().hex[:8]}"
    client = await RawClient(rig.port).connect()
    await client.send(raw_generation(request_id, body) + body[: len(body) // 2])
    await asyncio.sleep(0.2)  # the gateway has authenticated and is waiting for the rest of the body
    client.hang_up()

    record = await record_of_request(rig, request_id)
    assert_disconnect_recorded(record)
    assert rig.fake.received == [] and "images" not in record  # nothing was sent upstream
    await assert_budget_settled(rig, [record])


@pytest.mark.parametrize("served", SERVER_MODES)
async def test_client_disconnects_after_the_upstream_call_started(rig_factory, served: bool) -> None:
    rig = await rig_factory(tenant_limits={"budgets": BUDGET}, served=served)
    rig.fake.delay_s = 0.5
    body = json.dumps(PROMPT).encode()
    request_id = f"req-gone-upstream-{uuid.uuid4().hex[:8]}"
    client = await RawClient(rig.port).connect()
    await client.send(raw_generation(request_id, body) + body)
    while not rig.fake.received:  # the upstream call (and so the budget hold) is under way
        await asyncio.sleep(0.01)
    client.hang_up()

    record = await record_of_request(rig, request_id)
    assert_disconnect_recorded(record)
    # The upstream answered and was paid for: the images are in the trail, withheld from nobody
    # but released to nobody either, and the hold became the actual cost.
    assert record["provider"] == "openai" and len(record["images"]) == 1
    (hold,) = [d["details"]["hold_usd"] for d in decisions_of(record, "limits")]
    assert record["cost_usd"] is not None and hold != pytest.approx(record["cost_usd"])  # a leak would show
    rig.fake.delay_s = 0.0
    await assert_budget_settled(rig, [record])


async def test_slow_client_within_the_body_timeout_is_served(rig_factory) -> None:
    """Slow is not wrong: a body trickling in over about a second, within `server.body_timeout_s`, is
    served like any other (the guard below must not cut honest slow clients)."""
    rig = await rig_factory(tenant_limits={"budgets": BUDGET}, server={"body_timeout_s": 10})
    body = json.dumps(PROMPT).encode()
    client = await RawClient(rig.port).connect()
    await client.drip(raw_generation(f"req-slow-{uuid.uuid4().hex[:8]}", body) + body, chunk=8, pause_s=0.02)
    raw = await asyncio.wait_for(client.read_response(), timeout=30)
    record = await assert_moderated_release(rig, Answer(raw.status, json.loads(raw.body), CIMultiDict(raw.headers)))
    await assert_budget_settled(rig, [record])


async def test_slow_client_that_stalls_mid_body_gets_a_timeout(rig_factory) -> None:
    """A slowloris: half the body, then nothing, the socket held open. It must not hold a handler (or a
    budget) forever: it gets a 408 once `server.body_timeout_s` has passed."""
    rig = await rig_factory(tenant_limits={"budgets": BUDGET}, server={"body_timeout_s": 0.5})
    body = json.dumps(PROMPT).encode()
    request_id = f"req-slowloris-{uuid.uuid4().hex[:8]}"
    client = await RawClient(rig.port).connect()
    await client.drip(raw_generation(request_id, body) + body[: len(body) // 2], chunk=16, pause_s=0.02)
    served_meanwhile = await generate(rig)  # the gateway keeps serving others while it waits

    raw = await asyncio.wait_for(client.read_response(), timeout=30)
    answer = Answer(raw.status, json.loads(raw.body), CIMultiDict(raw.headers))
    assert_clear_error(answer, 408, "request_timeout")
    assert_no_image(answer)
    record = await assert_audited_refusal(rig, answer, 408, "request_timeout")
    assert record["request_id"] == request_id and "images" not in record
    assert len(rig.fake.received) == 1  # only the request served meanwhile went upstream
    earlier = [await assert_moderated_release(rig, served_meanwhile), record]
    await assert_budget_settled(rig, earlier)


async def test_slow_reader_is_audited_before_it_reads_and_does_not_hold_up_others(rig_factory) -> None:
    """A client that reads its (large) answer slowly: the audit record and the budget are settled before
    the first byte goes out, other requests go on, and the client finally gets the signed image."""
    rig = await rig_factory(tenant_limits={"budgets": BUDGET})
    rig.fake.image_side, rig.fake.noise = 384, True  # about 600 kB of base64: far more than the socket buffers
    body = json.dumps(PROMPT).encode()
    request_id = f"req-slow-reader-{uuid.uuid4().hex[:8]}"
    client = await RawClient(rig.port).connect(receive_buffer=4096)
    await client.send(raw_generation(request_id, body) + body)

    record = await record_of_request(rig, request_id)  # written while the client has read nothing
    assert record["status"] == 200 and record["images"][0]["released"] and record["images"][0]["manifest_id"]
    rig.fake.image_side, rig.fake.noise = 64, False
    await assert_budget_settled(rig, [record])  # others are served, nothing is held for the slow one

    raw = await asyncio.wait_for(client.read_response(pause_s=0.002, chunk=16384), timeout=60)
    answer = Answer(raw.status, json.loads(raw.body), CIMultiDict(raw.headers))
    assert answer.audit_id == record["id"]
    await assert_moderated_release(rig, answer)


# -- the stores behind the gateway ----------------------------------------------------------------------


async def metric(rig: Rig, name: str) -> float:
    """The sum of a Prometheus counter over its labels, from /metrics."""
    async with aiohttp.ClientSession() as session:
        async with session.get(rig.base.removesuffix("/v1") + "/metrics") as response:
            text = await response.text()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name) and not line.startswith("#"))


@pytest.fixture
async def redis_forwarder() -> AsyncIterator[tuple[TcpForwarder, str]]:
    """A forwarder to the shared Redis and a key prefix of this test's own (deleted afterwards)."""
    import redis.asyncio as redis

    direct = redis.Redis(host=REDIS_HOST, port=REDIS_PORT)
    try:
        await direct.ping()
    except Exception:
        await direct.aclose()
        pytest.skip(f"no Redis at {REDIS_HOST}:{REDIS_PORT}")
    forwarder = await TcpForwarder(REDIS_HOST, REDIS_PORT).start()
    prefix = f"imagegate-faults:{uuid.uuid4().hex[:12]}:"
    try:
        yield forwarder, prefix
    finally:
        await forwarder.close()
        keys = [key async for key in direct.scan_iter(match=prefix + "*", count=1000)]
        if keys:
            await direct.delete(*keys)
        await direct.aclose()


def redis_limits(forwarder: TcpForwarder, prefix: str, on_failure: str) -> dict[str, Any]:
    return {
        "backend": "redis",
        "redis_url": f"redis://127.0.0.1:{forwarder.port}/0",
        "key_prefix": prefix,
        "timeout_s": 0.5,
        "on_backend_failure": on_failure,
    }


TENANT_POLICY = {"rules": [{"name": "tenant", "scope": "tenant", "requests": 1000, "window": "1m"}], "budgets": BUDGET}


@pytest.mark.redis
async def test_redis_down_fails_closed_then_recovers(rig_factory, redis_forwarder) -> None:
    forwarder, prefix = redis_forwarder
    rig = await rig_factory(limits=redis_limits(forwarder, prefix, "closed"), tenant_limits=TENANT_POLICY)
    before = await generate(rig)
    first = await assert_moderated_release(rig, before)
    assert before.headers["X-RateLimit-Limit"] == "1000"

    await forwarder.cut()
    answer = await generate(rig)
    assert_clear_error(answer, 503, "limits_unavailable")
    assert_no_image(answer)
    assert answer.headers["Retry-After"]
    record = await assert_audited_refusal(rig, answer, 503, "limits_unavailable")
    (failed,) = decisions_of(record, "limits")
    assert failed["action"] == "error" and failed["details"]["fail_open"] is False
    assert len(rig.fake.received) == 1, "nothing may be spent upstream while the limits cannot be checked"
    assert await metric(rig, "imagegate_limit_backend_failures_total") >= 1

    await forwarder.restore()
    await assert_budget_settled(rig, [first, record])


@pytest.mark.redis
async def test_redis_down_lets_requests_through_unmetered_only_when_configured(rig_factory, redis_forwarder) -> None:
    forwarder, prefix = redis_forwarder
    rig = await rig_factory(limits=redis_limits(forwarder, prefix, "open"), tenant_limits=TENANT_POLICY)
    await forwarder.cut()
    answer = await generate(rig)
    # Unmetered, but still classified and signed: fail open applies to the limits, not to moderation.
    record = await assert_moderated_release(rig, answer)
    assert answer.headers["X-Imagegate-Limits"] == "unchecked" and "X-RateLimit-Limit" not in answer.headers
    (failed,) = decisions_of(record, "limits")
    assert failed["action"] == "error" and failed["details"]["fail_open"] is True

    await forwarder.restore()
    recovered = await generate(rig)
    await assert_moderated_release(rig, recovered)
    assert recovered.headers["X-RateLimit-Limit"] == "1000" and "X-Imagegate-Limits" not in recovered.headers


PG_FAULTS_DSN_ENV = "IMAGEGATE_FAULTS_PG_DSN"


@pytest.fixture
async def postgres_forwarder(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[TcpForwarder, str]]:
    """A forwarder to the shared PostgreSQL, its DSN in PG_FAULTS_DSN_ENV, and a schema of this test's
    own (dropped afterwards)."""
    import asyncpg

    from tests.proxy.audit_backends import postgres_dsn

    dsn = await postgres_dsn()
    if dsn is None:
        pytest.skip("no PostgreSQL server at 127.0.0.1:5432 (trust auth, database `test`)")
    target = urlsplit(dsn)
    assert target.hostname and target.port
    forwarder = await TcpForwarder(target.hostname, target.port).start()
    netloc = target.netloc.replace(f"{target.hostname}:{target.port}", f"127.0.0.1:{forwarder.port}")
    monkeypatch.setenv(PG_FAULTS_DSN_ENV, target._replace(netloc=netloc).geturl())
    schema = f"igfaults_{uuid.uuid4().hex[:12]}"
    try:
        yield forwarder, schema
    finally:
        await forwarder.close()
        connection = await asyncpg.connect(dsn)
        try:
            await connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        finally:
            await connection.close()


@pytest.mark.postgres
@pytest.mark.parametrize("mode", ["down-then-restarted", "restarted-while-idle", "cut-under-load"])
async def test_postgres_down_and_restarted(rig_factory, postgres_forwarder, mode: str) -> None:
    forwarder, schema = postgres_forwarder
    rig = await rig_factory(audit={"backend": "postgres", "dsn_env": PG_FAULTS_DSN_ENV, "postgres_schema": schema})
    acknowledged = [(await assert_recovers(rig))["id"] for _ in range(2)]

    refused: list[Answer] = []
    if mode == "cut-under-load":  # every connection cut while requests are in flight
        requests = [asyncio.create_task(generate(rig)) for _ in range(8)]
        await asyncio.wait(requests, return_when=asyncio.FIRST_COMPLETED)
        await forwarder.cut()
        answers = await asyncio.gather(*requests)
        acknowledged += [answer.audit_id for answer in answers if answer.status == 200]
        refused = [answer for answer in answers if answer.status != 200]
    else:
        await forwarder.cut()
        if mode == "down-then-restarted":
            refused = [await generate(rig)]
    for answer in refused:
        assert_clear_error(answer, 503, "audit_unavailable")
        assert_no_image(answer)
    # No record can be written while the store is down: each refusal is counted instead.
    assert await metric(rig, "imagegate_audit_write_failures_total") >= len(refused)

    await forwarder.restore()  # PostgreSQL is back, on the same address, with every connection gone
    for _ in range(2):
        acknowledged.append((await assert_recovers(rig))["id"])
    missing = [audit_id for audit_id in acknowledged if await audit_record(rig, audit_id) is None]
    assert missing == [], "an acknowledged record was lost"
    report = await rig.gateway.audit.verify()
    assert report.ok, report.to_dict()


async def test_sqlite_disk_full_withholds_the_result_then_recovers(rig_factory) -> None:
    rig = await rig_factory()
    store = rig.gateway.audit
    acknowledged = [(await assert_recovers(rig))["id"] for _ in range(2)]

    await sqlite_disk_full(store, True)
    # A long prompt (kept in full in the record): the record needs new pages, which the disk refuses.
    answer = await generate(rig, {**PROMPT, "prompt": "a lighthouse at dawn, " * 1000})
    assert_clear_error(answer, 503, "audit_unavailable")
    assert_no_image(answer)
    assert len(rig.fake.received) == 3, "the image was generated, then withheld"
    # No record can be written to a full disk: the refusal is counted, and nothing half-written stays.
    assert await metric(rig, "imagegate_audit_write_failures_total") == 1
    assert await audit_record(rig, answer.audit_id) is None

    await sqlite_disk_full(store, False)
    for _ in range(2):
        acknowledged.append((await assert_recovers(rig))["id"])
    assert [audit_id for audit_id in acknowledged if await audit_record(rig, audit_id) is None] == []
    report = await store.verify()
    # Besides the acknowledged exchanges, the chain holds only the audit records of the reads above
    # (`audit_record` reads as a compliance officer does, and such reads are audited).
    reads = await store.query(AuditQuery(outcome="admin_read", limit=1000))
    assert {read["access"]["ids"][0] for read in reads} <= set(acknowledged)
    assert report.ok and report.records == len(acknowledged) + len(reads), report.to_dict()
