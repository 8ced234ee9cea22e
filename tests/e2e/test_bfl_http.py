"""BFL's FLUX API through imagegate with plain HTTP, as BFL's docs show (BFL publishes no Python SDK):
submit, follow `polling_url`, fetch `result.sample`. Only the base URL changes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from proxy import webhooks
from proxy.app import GATEWAY, create_app
from tests.conftest import OTHER_TENANT_KEY, TENANT_KEY
from tests.fakes.bfl import FakeBFL
from tests.fakes.provider_harness import (
    Counters,
    count_audits,
    counting_stages,
    is_signed,
    only_loopback,
    provider_settings,
    serve,
)

MODELS = ["flux-dev", "flux-pro-1.1", "flux-kontext-pro"]


@pytest.fixture
async def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[dict[str, Any]]:
    fake = FakeBFL()
    monkeypatch.setenv("IMAGEGATE_TEST_PROVIDER_KEY", fake.key)
    upstream, upstream_url = await serve(fake.app())
    counters = Counters()
    app = create_app(provider_settings(tmp_path, "bfl", "bfl", upstream_url, MODELS), stages=counting_stages(counters, block_prompts=True))
    app[GATEWAY].jobs.webhooks = webhooks.WebhookSender(policy=only_loopback, backoff_s=0.01)  # loopback admitted explicitly
    count_audits(app, counters)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield {"fake": fake, "counters": counters, "app": app, "base": str(server.make_url("/bfl")), "root": str(server.make_url(""))}
    finally:
        await server.close()
        await upstream.close()


async def submit(http: aiohttp.ClientSession, base: str, body: dict[str, Any], key: str = TENANT_KEY, model: str = "flux-dev") -> tuple[int, dict[str, Any]]:
    async with http.post(f"{base}/v1/{model}", json=body, headers={"x-key": key, "accept": "application/json"}) as response:
        return response.status, await response.json()


async def poll_until_done(http: aiohttp.ClientSession, polling_url: str, key: str = TENANT_KEY) -> dict[str, Any]:
    for _ in range(200):
        async with http.get(polling_url, headers={"x-key": key, "accept": "application/json"}) as response:
            assert response.status == 200, await response.text()
            result = await response.json()
        if result["status"] not in ("Pending",):
            return result
        await asyncio.sleep(0.02)
    raise AssertionError("the job never finished")


async def test_polled_many_times_processed_exactly_once(env) -> None:
    fake, counters, base = env["fake"], env["counters"], env["base"]
    async with aiohttp.ClientSession() as http:
        status, job = await submit(http, base, {"prompt": "a cat holding a fish", "width": 1024, "height": 768})
        assert status == 200, job
        assert set(job) == {"id", "polling_url"}
        assert URL(job["polling_url"]).host == "127.0.0.1" and URL(job["polling_url"]).path == "/bfl/v1/get_result"
        # Many polls, some concurrent, while pending and after.
        results = await asyncio.gather(*(poll_until_done(http, job["polling_url"]) for _ in range(8)))
        for _ in range(10):
            results.append(await poll_until_done(http, job["polling_url"]))
        assert {result["status"] for result in results} == {"Ready"}
        sample = results[-1]["result"]["sample"]
        # The client is handed imagegate's copy, never BFL's delivery URL.
        assert URL(sample).path.startswith("/v1/assets/") and "delivery" not in sample
        async with http.get(sample) as response:
            assert response.status == 200
            assert is_signed(await response.read())
    await env["app"][GATEWAY].jobs.drain()
    assert counters.classified == 1 and counters.signed == 1
    assert len(counters.audits) == 1 and fake.samples_served == 1
    record = counters.audits[0]
    assert record["provider"] == "bfl" and record["model"] == "flux-dev" and record["status"] == 200
    sent = fake.submitted[0]
    assert sent["headers"]["x-key"] == fake.key and sent["body"]["width"] == 1024 and sent["body"]["prompt"] == "a cat holding a fish"
    assert results[-1]["result"]["seed"] == 42


async def test_blocked_prompt_is_refused_at_submit_and_never_sent(env) -> None:
    async with aiohttp.ClientSession() as http:
        status, body = await submit(http, env["base"], {"prompt": "something forbidden"})
    assert status == 400 and "detail" in body
    assert env["fake"].submitted == [] and len(env["counters"].audits) == 1


async def test_withheld_output_is_content_moderated(env) -> None:
    async with aiohttp.ClientSession() as http:
        _, job = await submit(http, env["base"], {"prompt": "withhold me"})
        result = await poll_until_done(http, job["polling_url"])
    assert result["status"] == "Content Moderated" and result["result"] is None
    assert len(env["counters"].audits) == 1


async def test_keys_and_tenants(env) -> None:
    async with aiohttp.ClientSession() as http:
        status, body = await submit(http, env["base"], {"prompt": "x"}, key="wrong")
        assert status == 401 and "detail" in body
        _, job = await submit(http, env["base"], {"prompt": "a quiet lake"})
        async with http.get(job["polling_url"], headers={"x-key": OTHER_TENANT_KEY}) as response:
            assert response.status == 404  # another tenant cannot read the job
        async with http.get(f"{env['base']}/v1/get_result?id=nope", headers={"x-key": TENANT_KEY}) as response:
            assert response.status == 404
        status, body = await submit(http, env["base"], {"width": 5})
        assert status == 422


async def test_webhook_receives_processed_result_signed(env) -> None:
    received: list[tuple[dict[str, str], bytes]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append((dict(request.headers), await request.read()))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    receiver, receiver_url = await serve(app)
    try:
        async with aiohttp.ClientSession() as http:
            _, job = await submit(
                http, env["base"], {"prompt": "a lighthouse", "webhook_url": f"{receiver_url}/hook", "webhook_secret": "client-secret"}
            )
            await env["app"][GATEWAY].jobs.drain()
            result = await poll_until_done(http, job["polling_url"])
    finally:
        await receiver.close()
    assert len(received) == 1
    headers, body = received[0]
    assert webhooks.verify("client-secret", headers, body)
    assert not webhooks.verify("another-secret", headers, body)
    payload = json.loads(body)
    assert payload["id"] == job["id"] and payload["status"] == "Ready"
    assert URL(payload["result"]["sample"]).path.startswith("/v1/assets/")
    assert "webhook_url" not in env["fake"].submitted[0]["body"]  # never forwarded to BFL
    assert result["status"] == "Ready" and len(env["counters"].audits) == 1


@pytest.mark.parametrize("url", ["http://10.0.0.7/hook", "http://169.254.169.254/latest", "ftp://example.com/x"])
async def test_webhook_to_private_address_is_refused_at_submit(env, url: str) -> None:
    async with aiohttp.ClientSession() as http:
        status, body = await submit(http, env["base"], {"prompt": "a lighthouse", "webhook_url": url})
    assert status == 422 and "not" in body["detail"]
    assert env["fake"].submitted == []
