"""Replicate through imagegate with the official `replicate` SDK: only `base_url` changes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import replicate
from aiohttp import web
from aiohttp.test_utils import TestServer
from replicate.exceptions import ReplicateError
from yarl import URL

from proxy import webhooks
from proxy.app import GATEWAY, create_app
from tests.conftest import OTHER_TENANT_KEY, TENANT_KEY
from tests.fakes.provider_harness import Counters, count_audits, counting_stages, is_signed, only_loopback, provider_settings, serve
from tests.fakes.replicate import FakeReplicate

MODEL = "black-forest-labs/flux-schnell"


@pytest.fixture
async def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[dict[str, Any]]:
    fake = FakeReplicate()
    monkeypatch.setenv("IMAGEGATE_TEST_PROVIDER_KEY", fake.token)
    upstream, upstream_url = await serve(fake.app())
    counters = Counters()
    app = create_app(provider_settings(tmp_path, "replicate", "replicate", upstream_url, [MODEL]), stages=counting_stages(counters, block_prompts=True))
    app[GATEWAY].jobs.webhooks = webhooks.WebhookSender(policy=only_loopback, backoff_s=0.01)
    count_audits(app, counters)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield {"fake": fake, "counters": counters, "app": app, "base": str(server.make_url("/replicate"))}
    finally:
        await server.close()
        await upstream.close()


def sdk(base: str, key: str = TENANT_KEY) -> replicate.Client:
    return replicate.Client(api_token=key, base_url=base)


async def test_run_waits_and_returns_imagegate_urls(env) -> None:
    client = sdk(env["base"])
    output = await client.async_run(MODEL, input={"prompt": "a red bicycle", "num_outputs": 2, "aspect_ratio": "1:1"}, use_file_output=False)
    assert isinstance(output, list) and len(output) == 2
    async with aiohttp.ClientSession() as http:
        for url in output:
            assert URL(url).path.startswith("/v1/assets/") and "delivery" not in url
            async with http.get(url) as response:
                assert response.status == 200 and is_signed(await response.read())
    fake, counters = env["fake"], env["counters"]
    sent = fake.created[0]
    assert sent["path"] == f"/v1/models/{MODEL}/predictions"
    assert sent["headers"]["Authorization"] == f"Bearer {fake.token}"
    assert sent["body"]["input"] == {"prompt": "a red bicycle", "num_outputs": 2, "aspect_ratio": "1:1"}
    await env["app"][GATEWAY].jobs.drain()
    assert counters.signed == 1 and len(counters.audits) == 1 and fake.delivered == 2


async def test_create_then_poll_many_times_processed_once(env) -> None:
    client = sdk(env["base"])
    env["fake"].processing_polls = 3
    prediction = await client.models.predictions.async_create(MODEL, input={"prompt": "a harbour"})
    assert prediction.status in ("starting", "processing", "succeeded")
    readings = await asyncio.gather(*(client.predictions.async_get(prediction.id) for _ in range(5)))
    assert all(reading.id == prediction.id for reading in readings)
    await prediction.async_wait()
    assert prediction.status == "succeeded" and len(prediction.output) == 1
    for _ in range(10):
        again = await client.predictions.async_get(prediction.id)
        assert again.status == "succeeded" and URL(again.output[0]).path.startswith("/v1/assets/")
    counters = env["counters"]
    assert counters.classified == 1 and counters.signed == 1 and len(counters.audits) == 1
    assert env["fake"].delivered == 1


async def test_blocked_prompt_raises_replicate_error_and_costs_nothing(env) -> None:
    with pytest.raises(ReplicateError) as caught:
        await sdk(env["base"]).async_run(MODEL, input={"prompt": "something forbidden"})
    assert caught.value.status == 400 or caught.value.status == 422
    assert env["fake"].created == [] and len(env["counters"].audits) == 1


async def test_upstream_failure_is_a_failed_prediction(env) -> None:
    env["fake"].fail_with = "CUDA out of memory"
    client = sdk(env["base"])
    prediction = await client.models.predictions.async_create(MODEL, input={"prompt": "a cat"})
    await prediction.async_wait()
    assert prediction.status == "failed" and "CUDA out of memory" in prediction.error


async def test_other_tenant_and_bad_key(env) -> None:
    prediction = await sdk(env["base"]).models.predictions.async_create(MODEL, input={"prompt": "a cat"})
    with pytest.raises(ReplicateError) as caught:
        await sdk(env["base"], OTHER_TENANT_KEY).predictions.async_get(prediction.id)
    assert caught.value.status == 404
    with pytest.raises(ReplicateError) as caught:
        await sdk(env["base"], "wrong").models.predictions.async_create(MODEL, input={"prompt": "a cat"})
    assert caught.value.status == 401


async def test_webhook_gets_processed_prediction_signed_with_the_default_secret(env) -> None:
    received: list[tuple[dict[str, str], bytes]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append((dict(request.headers), await request.read()))
        return web.Response()

    app = web.Application()
    app.router.add_post("/hook", hook)
    receiver, receiver_url = await serve(app)
    try:
        client = sdk(env["base"])
        secret = await client.webhooks.default.async_secret()
        await client.models.predictions.async_create(MODEL, input={"prompt": "a lighthouse"}, webhook=f"{receiver_url}/hook")
        await env["app"][GATEWAY].jobs.drain()
    finally:
        await receiver.close()
    assert len(received) == 1
    headers, body = received[0]
    assert webhooks.verify(secret.key, headers, body)
    # The SDK's own validator accepts it too (it raises on a bad signature).
    from replicate.webhook import Webhooks

    Webhooks.validate(headers=headers, body=body.decode(), secret=secret)
    payload = json.loads(body)
    assert payload["status"] == "succeeded" and URL(payload["output"][0]).path.startswith("/v1/assets/")
    assert "webhook" not in env["fake"].created[0]["body"]
    # Each tenant has its own secret: globex's cannot vouch for a delivery made to acme.
    other = await sdk(env["base"], OTHER_TENANT_KEY).webhooks.default.async_secret()
    assert other.key != secret.key and not webhooks.verify(other.key, headers, body)
    assert secret.key != env["app"][GATEWAY].jobs.webhook_secret  # the master secret is never handed out
