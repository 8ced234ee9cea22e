"""Idempotency keys: a retry gets the first result, is not generated again and not charged again."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web

from proxy.app import GATEWAY
from proxy.settings import Settings
from multidict import CIMultiDict

from tests.conftest import OTHER_TENANT_KEY, TENANT_KEY, make_settings
from tests.proxy.test_limits_stage import limits_stages, post, with_limits
from tests.proxy.test_limits_store import REDIS_URL, redis_prefix  # noqa: F401 - fixture

BODY = {"model": "gpt-image-1", "prompt": "a paper boat", "quality": "low", "size": "1024x1024"}


def budget_settings(tmp_path: Path, upstream_url: str, **section: Any) -> Settings:
    return with_limits(make_settings(tmp_path, upstream_url), global_section=section, budgets={"tenant": {"day_usd": 5}})


async def test_retry_returns_the_first_result_and_is_not_charged(tmp_path: Path, fake_openai, start_gateway, upstream_key: str) -> None:
    fake, upstream_url = fake_openai
    server, base = await start_gateway(budget_settings(tmp_path, upstream_url), stages=limits_stages)
    async with aiohttp.ClientSession() as session:
        first = await post(session, base, BODY, **{"Idempotency-Key": "order-1"})
        retry = await post(session, base, BODY, **{"Idempotency-Key": "order-1"})
    (status, headers, body), (retry_status, retry_headers, retry_body) = first, retry
    assert status == retry_status == 200 and retry_body == body
    assert len(fake.received) == 1  # generated once
    assert headers["X-Imagegate-Cost-USD"] == "0.010930" and retry_headers["X-Imagegate-Cost-USD"] == "0.000000"
    assert retry_headers["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in headers
    assert retry_headers["X-Imagegate-Replay-Of"] == headers["X-Imagegate-Audit-Id"]
    assert retry_headers["X-Imagegate-Audit-Id"] != headers["X-Imagegate-Audit-Id"]
    assert retry_headers["X-Request-Id"] != headers["X-Request-Id"]
    assert retry_headers["X-Imagegate-Budget-Remaining-USD"] == headers["X-Imagegate-Budget-Remaining-USD"]
    # The replay has an audit record of its own that says what it was, and cost nothing.
    record = await server.app[GATEWAY].audit.get(retry_headers["X-Imagegate-Audit-Id"])
    replay = next(d for d in record["decisions"] if d["stage"] == "limits")
    assert replay["reason"] == "idempotent replay of an earlier response"
    assert replay["details"]["replay_of"] == headers["X-Imagegate-Audit-Id"]
    assert record["cost_usd"] == 0.0 and record["status"] == 200 and record["outcome"] == "allow" and "images" not in record
    # The budget was charged once: the next request sees one charge only.
    async with aiohttp.ClientSession() as session:
        _, after, _ = await post(session, base, BODY)
    assert after["X-Imagegate-Budget-Remaining-USD"] == f"{5 - 2 * 0.01093:.6f}"


async def test_sdk_retry_with_the_same_key(tmp_path: Path, fake_openai, start_gateway, upstream_key: str) -> None:
    fake, upstream_url = fake_openai
    _, base = await start_gateway(budget_settings(tmp_path, upstream_url), stages=limits_stages)
    async with openai.AsyncOpenAI(base_url=base, api_key=TENANT_KEY, max_retries=0) as sdk:
        options = {"extra_headers": {"Idempotency-Key": "sdk-1"}}
        first = await sdk.images.generate(model="gpt-image-1", prompt="a fox", **options)
        second = await sdk.images.generate(model="gpt-image-1", prompt="a fox", **options)
    assert first.data[0].b64_json == second.data[0].b64_json and len(fake.received) == 1


async def test_concurrent_duplicate_is_refused_with_409(tmp_path: Path, fake_openai, start_gateway, upstream_key: str) -> None:
    fake, upstream_url = fake_openai
    fake.delay_s = 1.0  # the first request is in flight upstream for this long
    _, base = await start_gateway(budget_settings(tmp_path, upstream_url), stages=limits_stages)
    async with aiohttp.ClientSession() as session:
        first = asyncio.ensure_future(post(session, base, BODY, **{"Idempotency-Key": "dup"}))
        # The duplicate goes once the first has reached the provider (so it holds the key), not
        # after a fixed head start that a stalled machine could overrun.
        for _ in range(500):
            if fake.received or first.done():
                break
            await asyncio.sleep(0.01)
        assert fake.received and not first.done()
        status, headers, body = await post(session, base, BODY, **{"Idempotency-Key": "dup"})
        assert (await first)[0] == 200
        assert (await post(session, base, BODY, **{"Idempotency-Key": "dup"}))[1]["Idempotent-Replayed"] == "true"
    assert status == 409 and body["error"]["code"] == "idempotency_key_in_use" and int(headers["Retry-After"]) >= 1
    assert len(fake.received) == 1


async def test_key_reused_for_another_request_is_422_and_keys_are_per_tenant(tmp_path: Path, fake_openai, start_gateway, upstream_key: str) -> None:
    fake, upstream_url = fake_openai
    _, base = await start_gateway(budget_settings(tmp_path, upstream_url), stages=limits_stages)
    async with aiohttp.ClientSession() as session:
        assert (await post(session, base, BODY, **{"Idempotency-Key": "k"}))[0] == 200
        status, _, body = await post(session, base, {**BODY, "prompt": "something else"}, **{"Idempotency-Key": "k"})
        assert status == 422 and body["error"]["code"] == "idempotency_key_reused"
        status, headers, _ = await post(session, base, BODY, key=OTHER_TENANT_KEY, **{"Idempotency-Key": "k"})
        assert status == 200 and "Idempotent-Replayed" not in headers
    assert len(fake.received) == 2


async def test_a_failed_first_attempt_is_not_kept(tmp_path: Path, fake_openai, start_gateway, upstream_key: str) -> None:
    fake, upstream_url = fake_openai
    calls = 0

    async def flaky(request: web.Request) -> web.StreamResponse:
        nonlocal calls
        calls += 1
        if calls == 1:
            return web.json_response({"error": {"message": "busy", "type": "server_error", "code": None}}, status=503)
        return await fake.images(request)

    fake.handler = flaky
    _, base = await start_gateway(budget_settings(tmp_path, upstream_url), stages=limits_stages)
    async with aiohttp.ClientSession() as session:
        assert (await post(session, base, BODY, **{"Idempotency-Key": "retry-me"}))[0] >= 500
        status, headers, _ = await post(session, base, BODY, **{"Idempotency-Key": "retry-me"})
        assert status == 200 and "Idempotent-Replayed" not in headers and headers["X-Imagegate-Cost-USD"] == "0.010930"
        assert (await post(session, base, BODY, **{"Idempotency-Key": "retry-me"}))[1]["Idempotent-Replayed"] == "true"
    assert calls == 2


@pytest.fixture
async def two_gateways(tmp_path: Path, fake_openai, start_gateway, upstream_key: str, redis_prefix: str) -> AsyncIterator[tuple[Any, list[str]]]:  # noqa: F811
    fake, upstream_url = fake_openai
    bases = []
    for replica in ("a", "b"):
        settings = budget_settings(tmp_path / replica, upstream_url, backend="redis", redis_url=REDIS_URL, key_prefix=redis_prefix)
        bases.append((await start_gateway(settings, stages=limits_stages))[1])
    yield fake, bases


@pytest.mark.redis
async def test_replay_across_replicas_through_redis(two_gateways: tuple[Any, list[str]]) -> None:
    fake, (base_a, base_b) = two_gateways
    async with aiohttp.ClientSession() as session:
        status, _, body = await post(session, base_a, BODY, **{"Idempotency-Key": "shared"})
        retry_status, retry_headers, retry_body = await post(session, base_b, BODY, **{"Idempotency-Key": "shared"})
        _, after, _ = await post(session, base_b, BODY)
    assert status == retry_status == 200 and body == retry_body and retry_headers["Idempotent-Replayed"] == "true"
    assert len(fake.received) == 2  # the first request and the last, never the retry
    assert after["X-Imagegate-Budget-Remaining-USD"] == f"{5 - 2 * 0.01093:.6f}"


async def test_retry_on_the_stability_surface_replays_the_raw_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Idempotency is not an OpenAI feature: a Stability client's retry gets the same bytes, one upstream call."""
    from aiohttp.test_utils import TestServer

    from proxy.app import create_app
    from tests.fakes.provider_harness import provider_settings, serve
    from tests.fakes.stability import FakeStability

    fake = FakeStability()
    monkeypatch.setenv("IMAGEGATE_TEST_PROVIDER_KEY", fake.key)
    upstream, upstream_url = await serve(fake.app())
    settings = provider_settings(tmp_path, "stability", "stability", upstream_url, ["stable-image-core"])
    app = create_app(with_limits(settings, global_section={}, budgets={"tenant": {"day_usd": 5}}), stages=limits_stages)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    url = str(server.make_url("/stability/v2beta/stable-image/generate/core"))

    async def generate(prompt: str) -> tuple[int, CIMultiDict[str], bytes]:
        form = aiohttp.FormData(default_to_multipart=True)
        form.add_field("prompt", prompt)
        form.add_field("output_format", "png")
        headers = {"Authorization": f"Bearer {TENANT_KEY}", "Accept": "image/*", "Idempotency-Key": "stab-1"}
        async with aiohttp.ClientSession() as session, session.post(url, data=form, headers=headers) as response:
            return response.status, CIMultiDict(response.headers), await response.read()

    try:
        status, headers, image = await generate("a lighthouse at dusk")
        retry_status, retry_headers, retry_image = await generate("a lighthouse at dusk")
        reused_status, _, reused_body = await generate("a different lighthouse")
    finally:
        await server.close()
        await upstream.close()
    assert status == retry_status == 200 and retry_image == image and image.startswith(b"\x89PNG")
    assert retry_headers["Content-Type"] == headers["Content-Type"] == "image/png"
    assert retry_headers["Idempotent-Replayed"] == "true" and retry_headers["X-Imagegate-Cost-USD"] == "0.000000"
    assert len(fake.received) == 1
    # The same key for another request: refused in Stability's own error shape.
    error = json.loads(reused_body)
    assert reused_status == 422 and error["name"] == "invalid_parameters"
    assert "Idempotency-Key was already used for a different request" in error["errors"][0]
