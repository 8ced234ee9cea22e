"""Stability AI's v2beta API through imagegate, with plain HTTP as Stability's docs show (no official
Python SDK for v2beta): only the base URL changes."""

from __future__ import annotations

import base64
import io
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from proxy.app import create_app
from tests.conftest import TENANT_KEY
from tests.fakes.openai_upstream import make_image
from tests.fakes.provider_harness import Counters, count_audits, counting_stages, is_signed, provider_settings, serve
from tests.fakes.stability import FakeStability

MODELS = ["stable-image-core", "stable-image-ultra", "sd3.5-large", "sd3.5-medium", "stability-inpaint", "stability-erase"]


@pytest.fixture
async def gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[FakeStability, Counters, str]]:
    fake = FakeStability()
    monkeypatch.setenv("IMAGEGATE_TEST_PROVIDER_KEY", fake.key)
    upstream, upstream_url = await serve(fake.app())
    counters = Counters()
    app = create_app(provider_settings(tmp_path, "stability", "stability", upstream_url, MODELS), stages=counting_stages(counters, block_prompts=True))
    count_audits(app, counters)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield fake, counters, str(server.make_url("/stability"))
    finally:
        await server.close()
        await upstream.close()


def form(**fields: str | bytes) -> aiohttp.FormData:
    data = aiohttp.FormData(default_to_multipart=True)
    for key, value in fields.items():
        if isinstance(value, bytes):
            data.add_field(key, value, filename=f"{key}.png", content_type="image/png")
        else:
            data.add_field(key, value)
    return data


async def test_core_raw_image_answer(gateway) -> None:
    fake, counters, base = gateway
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{base}/v2beta/stable-image/generate/core",
            headers={"Authorization": f"Bearer {TENANT_KEY}", "Accept": "image/*"},
            data=form(prompt="a lighthouse at dusk", negative_prompt="fog", aspect_ratio="16:9", output_format="png"),
        ) as response:
            body = await response.read()
            assert response.status == 200, body
            assert response.content_type == "image/png"
            assert response.headers["finish-reason"] == "SUCCESS" and response.headers["seed"] == "1234"
    assert is_signed(body)
    sent = fake.received[0]
    assert sent["path"] == "/v2beta/stable-image/generate/core"
    assert sent["headers"]["Authorization"] == f"Bearer {fake.key}"  # imagegate's upstream key, not the client's
    assert sent["headers"]["Accept"] == "application/json"  # imagegate always sees the bytes as JSON
    assert sent["fields"]["prompt"] == "a lighthouse at dusk" and sent["fields"]["negative_prompt"] == "fog"
    assert sent["fields"]["aspect_ratio"] == "16:9"
    assert counters.signed == 1 and len(counters.audits) == 1
    record = counters.audits[0]
    assert record["provider"] == "stability" and record["model"] == "stable-image-core"


async def test_sd3_json_answer(gateway) -> None:
    fake, counters, base = gateway
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{base}/v2beta/stable-image/generate/sd3",
            headers={"Authorization": f"Bearer {TENANT_KEY}", "Accept": "application/json"},
            data=form(prompt="a fox", model="sd3.5-medium", output_format="jpeg"),
        ) as response:
            payload = await response.json()
            assert response.status == 200, payload
    assert payload["finish_reason"] == "SUCCESS" and payload["seed"] == 1234
    assert is_signed(base64.b64decode(payload["image"]))
    assert fake.received[0]["fields"]["model"] == "sd3.5-medium"
    assert fake.received[0]["fields"]["output_format"] == "jpeg"


async def test_inpaint_edit_sends_image_and_mask(gateway) -> None:
    fake, counters, base = gateway
    image, mask = make_image((32, 32)), make_image((32, 32), colour=(255, 255, 255))
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{base}/v2beta/stable-image/edit/inpaint",
            headers={"Authorization": f"Bearer {TENANT_KEY}", "Accept": "image/*"},
            data=form(prompt="a red door", image=image, mask=mask),
        ) as response:
            assert response.status == 200, await response.text()
    sent = fake.received[0]
    assert sent["path"] == "/v2beta/stable-image/edit/inpaint"
    assert sent["files"]["image"] == image and sent["files"]["mask"] == mask
    assert counters.audits[0]["operation"] == "edit" and len(counters.audits[0]["input_images"]) == 2


async def test_blocked_prompt_is_a_stability_shaped_403_and_costs_nothing(gateway) -> None:
    fake, counters, base = gateway
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{base}/v2beta/stable-image/generate/ultra",
            headers={"Authorization": f"Bearer {TENANT_KEY}", "Accept": "image/*"},
            data=form(prompt="something forbidden"),
        ) as response:
            payload = await response.json()
            assert response.status == 403
    assert payload["name"] == "content_moderation" and payload["errors"] and "id" in payload
    assert fake.received == [] and len(counters.audits) == 1


async def test_bad_key_and_upstream_errors_keep_stability_shapes(gateway) -> None:
    fake, counters, base = gateway
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/v2beta/stable-image/generate/core", headers={"Authorization": "Bearer nope"}, data=form(prompt="x")) as response:
            assert response.status == 401
            assert (await response.json())["name"] == "unauthorized"
        async with http.post(
            f"{base}/v2beta/stable-image/generate/sd3",
            headers={"Authorization": f"Bearer {TENANT_KEY}"},
            data=form(prompt="x", model="sd3-unknown"),
        ) as response:
            assert response.status == 404  # not a configured model: refused before the upstream
            assert (await response.json())["name"] == "not_found"


async def test_withheld_image_never_reaches_the_client(gateway) -> None:
    fake, counters, base = gateway
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{base}/v2beta/stable-image/generate/core",
            headers={"Authorization": f"Bearer {TENANT_KEY}", "Accept": "image/*"},
            data=form(prompt="please withhold this"),
        ) as response:
            payload = await response.json()
            assert response.status == 403 and payload["name"] == "content_moderation"
    assert counters.audits[0]["images"][0]["released"] is False
