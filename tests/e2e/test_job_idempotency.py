"""`Idempotency-Key` on the job surfaces (BFL, fal queue, Replicate): a retried submit is the same job.

A retry with the same key, tenant and body gets the first submit's answer again (the same job id),
with no second upstream submit and no second charge; the same key with another body is refused as on
the synchronous surfaces (422). With the in-memory limit store and with Redis, against the fake
upstreams.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from policies.limits import LimitPolicy, plan_budgets
from proxy import webhooks
from proxy.app import GATEWAY, StageDeps, create_app
from proxy.pipeline import Stage
from proxy.settings import Settings
from proxy.stages.limits import LimitsStage, build_limits_stage
from tests.conftest import OTHER_TENANT_KEY, TENANT_KEY
from tests.fakes.bfl import FakeBFL
from tests.fakes.fal import FakeFal
from tests.fakes.provider_harness import Counters, count_audits, counting_stages, only_loopback, provider_settings, serve
from tests.fakes.replicate import FakeReplicate
from tests.proxy.test_limits_stage import with_limits
from tests.proxy.test_limits_store import REDIS_URL, redis_prefix  # noqa: F401 - fixture


@dataclass(frozen=True)
class Surface:
    name: str
    model: str
    fake: Callable[[], Any]
    submit_path: str
    #: The submit body for a prompt, the client's key headers, the job id in a submit answer.
    body: Callable[[str], dict[str, Any]]
    headers: Callable[[str], dict[str, str]]
    job_id: Callable[[dict[str, Any]], str]
    #: Submits the fake upstream received.
    upstream_submits: Callable[[Any], int]


SURFACES = {
    "bfl": Surface(
        "bfl", "flux-dev", FakeBFL, "/bfl/v1/flux-dev",
        lambda prompt: {"prompt": prompt, "width": 1024, "height": 768},
        lambda key: {"x-key": key}, lambda answer: answer["id"], lambda fake: len(fake.submitted),
    ),
    "fal": Surface(
        "fal", "fal-ai/flux/schnell", FakeFal, "/fal/queue/fal-ai/flux/schnell",
        lambda prompt: {"prompt": prompt, "image_size": "square"},
        lambda key: {"Authorization": f"Key {key}"}, lambda answer: answer["request_id"], lambda fake: len(fake.submitted),
    ),
    "replicate": Surface(
        "replicate", "black-forest-labs/flux-schnell", FakeReplicate,
        "/replicate/v1/models/black-forest-labs/flux-schnell/predictions",
        lambda prompt: {"input": {"prompt": prompt}},
        lambda key: {"Authorization": f"Bearer {key}"}, lambda answer: answer["id"], lambda fake: len(fake.created),
    ),
}


def with_real_limits(counters: Counters) -> Callable[[Settings, StageDeps], Sequence[Stage]]:
    """The counting chain (classifier and signer stand-ins) with the real limits stage."""

    def stages(settings: Settings, deps: StageDeps) -> Sequence[Stage]:
        chain = list(counting_stages(counters, block_prompts=True)(settings, deps))
        limits = build_limits_stage(settings)
        limits.bind_metrics(deps.metrics)
        return [limits if stage.name == "limits" else stage for stage in chain]

    return stages


@dataclass
class Env:
    surface: Surface
    fake: Any
    counters: Counters
    app: web.Application
    root: str
    #: The limit store's backend these tests asked for: memory or redis.
    backend: str

    @property
    def limits(self) -> LimitsStage:
        return next(stage for stage in self.app[GATEWAY].pipeline.stages if stage.name == "limits")  # type: ignore[return-value]

    async def submit(
        self, http: aiohttp.ClientSession, prompt: str, key: str | None, *, tenant_key: str = TENANT_KEY,
        body: dict[str, Any] | None = None, **headers: str,
    ) -> tuple[int, dict[str, str], dict[str, Any]]:
        sent = {**self.surface.headers(tenant_key), **headers}
        if key is not None:
            sent["Idempotency-Key"] = key
        async with http.post(self.root + self.surface.submit_path, json=body or self.surface.body(prompt), headers=sent) as answer:
            return answer.status, dict(answer.headers), await answer.json()

    async def spent_micros(self) -> int:
        """What the tenant's day budget has been charged (read with a zero hold)."""
        policy = LimitPolicy.model_validate({"budgets": {"tenant": {"day_usd": 5}}})
        budgets = plan_budgets(policy, tenant="acme", user=None, key_id="k", now=time.time())
        outcome = await self.limits.store.check([], budgets, 0)
        return outcome.budgets[0].spent_micros


@pytest.fixture(params=["memory", "redis"])
def limits_backend(request: pytest.FixtureRequest) -> dict[str, Any]:
    if request.param == "memory":
        return {}
    prefix = request.getfixturevalue("redis_prefix")  # skips without Redis
    return {"backend": "redis", "redis_url": REDIS_URL, "key_prefix": prefix}


async def start_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, surface: Surface, limits: dict[str, Any]) -> AsyncIterator[Env]:
    fake = surface.fake()
    monkeypatch.setenv("IMAGEGATE_TEST_PROVIDER_KEY", getattr(fake, "key", None) or fake.token)
    upstream, upstream_url = await serve(fake.app())
    settings = provider_settings(tmp_path, surface.name, surface.name, upstream_url, [surface.model])
    settings = with_limits(settings, global_section=limits, budgets={"tenant": {"day_usd": 5}})
    counters = Counters()
    app = create_app(settings, stages=with_real_limits(counters))
    app[GATEWAY].jobs.webhooks = webhooks.WebhookSender(policy=only_loopback, backoff_s=0.01)  # loopback admitted explicitly
    count_audits(app, counters)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield Env(surface, fake, counters, app, str(server.make_url("")).rstrip("/"), limits.get("backend", "memory"))
    finally:
        await server.close()
        await upstream.close()


@pytest.fixture(params=list(SURFACES))
async def env(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limits_backend: dict[str, Any]) -> AsyncIterator[Env]:
    async for value in start_env(tmp_path, monkeypatch, SURFACES[request.param], limits_backend):
        yield value


@pytest.fixture
async def bfl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Env]:
    async for value in start_env(tmp_path, monkeypatch, SURFACES["bfl"], {}):
        yield value


async def test_a_retried_submit_is_the_same_job_submitted_and_charged_once(env: Env) -> None:
    assert env.limits.store.backend == env.backend
    async with aiohttp.ClientSession() as http:
        status, headers, first = await env.submit(http, "a paper boat", "order-1")
        assert status in (200, 201), first
        retry_status, retry_headers, retry = await env.submit(http, "a paper boat", "order-1")
        assert (retry_status, retry) == (status, first)
        job_id = env.surface.job_id(first)
        assert retry_headers["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in headers
        assert retry_headers["X-Imagegate-Replay-Of"] == headers["X-Imagegate-Audit-Id"]
        assert retry_headers["X-Imagegate-Audit-Id"] != headers["X-Imagegate-Audit-Id"]
        await env.app[GATEWAY].jobs.drain()
        # Once the job is done, a retry is still the same job.
        late_status, _, late = await env.submit(http, "a paper boat", "order-1")
        assert (late_status, late) == (status, first)
        # Without a key, the same body is a new job.
        _, _, fresh = await env.submit(http, "a paper boat", None)
        assert env.surface.job_id(fresh) != job_id
    await env.app[GATEWAY].jobs.drain()
    assert env.surface.upstream_submits(env.fake) == 2  # the keyed job once, the unkeyed one once
    job = await env.app[GATEWAY].jobs.store.get(job_id)
    assert job is not None and job.status == "succeeded" and job.tenant == "acme"
    records = {record["id"]: record for record in env.counters.audits}
    first_record = records[headers["X-Imagegate-Audit-Id"]]
    replay_record = records[retry_headers["X-Imagegate-Audit-Id"]]
    assert first_record["cost_usd"] > 0 and first_record["status"] == 200
    assert replay_record["cost_usd"] == 0.0 and replay_record["outcome"] == "allow" and replay_record["status"] == status
    replay = next(d for d in replay_record["decisions"] if d["stage"] == "limits")
    assert replay["reason"] == "idempotent replay of an earlier response"
    assert replay["details"]["replay_of"] == headers["X-Imagegate-Audit-Id"]
    # Charged for two jobs (the keyed one and the unkeyed one), not for the replays.
    charged = [record["cost_usd"] for record in env.counters.audits if record["cost_usd"]]
    assert len(charged) == 2
    assert await env.spent_micros() == round(sum(charged) * 1_000_000)


async def test_the_same_key_for_another_body_is_refused_as_on_the_sync_surfaces(env: Env) -> None:
    async with aiohttp.ClientSession() as http:
        status, _, _ = await env.submit(http, "a paper boat", "order-2")
        assert status in (200, 201)
        refused_status, refused_headers, refused = await env.submit(http, "a paper plane", "order-2")
    await env.app[GATEWAY].jobs.drain()
    assert refused_status == 422
    assert "Idempotency-Key was already used for a different request" in str(refused)
    assert "X-Imagegate-Audit-Id" in refused_headers
    assert env.surface.upstream_submits(env.fake) == 1


async def test_a_submit_refused_before_the_upstream_frees_its_key(bfl: Env) -> None:
    async with aiohttp.ClientSession() as http:
        status, _, _ = await bfl.submit(http, "something forbidden", "order-3")
        again, _, _ = await bfl.submit(http, "something forbidden", "order-3")  # judged again, not replayed
        assert status == again == 400
        status, _, answer = await bfl.submit(http, "a quiet lake", "order-3")  # the key was never used up
        assert status == 200 and "id" in answer
    await bfl.app[GATEWAY].jobs.drain()
    assert len(bfl.fake.submitted) == 1


async def test_keys_belong_to_one_tenant(bfl: Env) -> None:
    async with aiohttp.ClientSession() as http:
        _, _, ours = await bfl.submit(http, "a quiet lake", "shared-key")
        status, headers, theirs = await bfl.submit(http, "a quiet lake", "shared-key", tenant_key=OTHER_TENANT_KEY)
    await bfl.app[GATEWAY].jobs.drain()
    assert status == 200 and theirs["id"] != ours["id"] and "Idempotent-Replayed" not in headers
    assert len(bfl.fake.submitted) == 2


async def test_another_webhook_is_another_request(bfl: Env) -> None:
    received: list[bytes] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.Response(status=204)

    receiver_app = web.Application()
    receiver_app.router.add_post("/hook", hook)
    receiver, receiver_url = await serve(receiver_app)
    try:
        async with aiohttp.ClientSession() as http:
            body = {"prompt": "a lighthouse", "webhook_url": f"{receiver_url}/hook"}
            status, _, first = await bfl.submit(http, "", "order-4", body=body)
            assert status == 200
            _, _, same = await bfl.submit(http, "", "order-4", body=body)
            assert same == first
            other, _, _ = await bfl.submit(http, "", "order-4", body={**body, "webhook_url": f"{receiver_url}/hook?b"})
            assert other == 422
        await bfl.app[GATEWAY].jobs.drain()
    finally:
        await receiver.close()
    assert len(bfl.fake.submitted) == 1 and len(received) == 1


async def test_a_replicate_submit_that_waits_is_replayed_with_its_finished_prediction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limits_backend: dict[str, Any]
) -> None:
    """`Prefer: wait`: the job finishes before the submit answers; the answer is still what is kept."""
    async for env in start_env(tmp_path, monkeypatch, SURFACES["replicate"], limits_backend):
        async with aiohttp.ClientSession() as http:
            status, _, first = await env.submit(http, "a harbour", "order-5", Prefer="wait=5")
            assert status == 201 and first["status"] == "succeeded" and first["output"], first
            retry_status, retry_headers, retry = await env.submit(http, "a harbour", "order-5", Prefer="wait=5")
        await env.app[GATEWAY].jobs.drain()
        assert (retry_status, retry) == (status, first) and retry_headers["Idempotent-Replayed"] == "true"
        assert len(env.fake.created) == 1
