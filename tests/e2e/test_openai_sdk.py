"""End to end through the official `openai` SDK: a client changes only its base URL."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import aiohttp
import openai
import pytest
from openai.types import ImagesResponse
from PIL import Image

from policies.decisions import Action, Decision
from proxy.app import StageDeps, default_stages
from proxy.errors import ContentPolicyError
from proxy.exchange import Exchange
from proxy.pipeline import BaseStage
from proxy.settings import Settings
from tests.conftest import TENANT_KEY, make_settings
from tests.fakes.openai_upstream import make_image


def client(base_url: str, key: str = TENANT_KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=20)


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


async def test_generation_b64_json_round_trip(tmp_path: Path, fake_openai, start_gateway, upstream_key: str) -> None:
    fake, upstream_url = fake_openai
    _, base_url = await start_gateway(make_settings(tmp_path, upstream_url))
    async with client(base_url) as sdk:
        result = await sdk.images.generate(model="gpt-image-1", prompt="a red bicycle", size="1024x1024", quality="low", user="u-42")
    assert isinstance(result, ImagesResponse)
    assert len(result.data) == 1
    image = decode(base64.b64decode(result.data[0].b64_json))
    assert image.format == "PNG" and image.size == (64, 64)
    sent = fake.received[0]
    # The upstream key is injected by imagegate; the client's key never reaches the provider.
    assert sent["headers"]["Authorization"] == f"Bearer {upstream_key}"
    assert sent["fields"]["prompt"] == "a red bicycle"
    assert sent["fields"]["quality"] == "low" and sent["fields"]["user"] == "u-42"
    assert result.usage is not None and result.usage.output_tokens == 272


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
async def test_each_output_format(tmp_path: Path, fake_openai, start_gateway, upstream_key: str, fmt: str) -> None:
    fake, upstream_url = fake_openai
    _, base_url = await start_gateway(make_settings(tmp_path, upstream_url))
    async with client(base_url) as sdk:
        result = await sdk.images.generate(model="gpt-image-1", prompt="a lighthouse", output_format=fmt)
    image = decode(base64.b64decode(result.data[0].b64_json))
    assert image.format == {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}[fmt]
    assert result.output_format == fmt


async def test_n3_returns_three_images(tmp_path: Path, fake_openai, start_gateway, upstream_key: str) -> None:
    _, upstream_url = fake_openai
    _, base_url = await start_gateway(make_settings(tmp_path, upstream_url))
    async with client(base_url) as sdk:
        result = await sdk.images.generate(model="gpt-image-1", prompt="three cats", n=3)
    assert len(result.data) == 3
    digests = {base64.b64decode(item.b64_json) for item in result.data}
    assert len(digests) == 3


async def test_url_response_format_served_by_imagegate(tmp_path: Path, fake_openai, start_gateway, upstream_key: str) -> None:
    fake, upstream_url = fake_openai
    _, base_url = await start_gateway(make_settings(tmp_path, upstream_url))
    async with client(base_url) as sdk:
        result = await sdk.images.generate(model="dall-e-3", prompt="a harbour at dawn", response_format="url", n=2)
    # The upstream was asked for base64 (imagegate must see the bytes); the client gets imagegate URLs.
    assert fake.received[0]["fields"]["response_format"] == "b64_json"
    async with aiohttp.ClientSession() as http:
        for item in result.data:
            assert item.url is not None and item.url.startswith(base_url.removesuffix("/v1"))
            async with http.get(item.url) as fetched:
                assert fetched.status == 200
                assert decode(await fetched.read()).format == "PNG"
            async with http.get(item.url.replace("signature=", "signature=00")) as tampered:
                assert tampered.status == 403


async def test_edit_with_two_images_and_mask(tmp_path: Path, fake_openai, start_gateway, upstream_key: str) -> None:
    fake, upstream_url = fake_openai
    _, base_url = await start_gateway(make_settings(tmp_path, upstream_url))
    first = make_image((32, 32), "png", (255, 0, 0))
    second = make_image((32, 32), "jpeg", (0, 255, 0))
    mask = make_image((32, 32), "png", (0, 0, 0))
    async with client(base_url) as sdk:
        result = await sdk.images.edit(
            model="gpt-image-1",
            image=[("first.png", first, "image/png"), ("second.jpg", second, "image/jpeg")],
            mask=("mask.png", mask, "image/png"),
            prompt="put them side by side",
        )
    assert len(result.data) == 1
    decode(base64.b64decode(result.data[0].b64_json))
    sent = fake.received[0]
    assert sent["path"] == "/v1/images/edits"
    assert sent["files"]["image[]"] == [first, second]
    assert sent["files"]["mask"] == [mask]
    assert sent["fields"]["prompt"] == "put them side by side"


class BlockEverything(BaseStage):
    """A test stage configured to block, standing where the prompt filter goes."""

    name = "prompt_filter"

    async def on_request(self, exchange: Exchange) -> None:
        exchange.decide(Decision(self.name, Action.BLOCK, category="test", reason="blocked by the test stage"))
        raise ContentPolicyError("Your request was rejected by the safety system (category: test).")


def blocking_stages(settings: Settings, deps: StageDeps):
    chain = default_stages(settings, deps)
    return [BlockEverything() if stage.name == "prompt_filter" else stage for stage in chain]


async def test_blocked_request_raises_sdk_error_and_never_reaches_upstream(
    tmp_path: Path, fake_openai, start_gateway, upstream_key: str
) -> None:
    fake, upstream_url = fake_openai
    server, base_url = await start_gateway(make_settings(tmp_path, upstream_url), stages=blocking_stages)
    async with client(base_url) as sdk:
        with pytest.raises(openai.BadRequestError) as caught:
            await sdk.images.generate(model="gpt-image-1", prompt="anything at all")
    assert caught.value.code == "content_policy_violation"
    assert caught.value.status_code == 400
    assert fake.received == []
    audit_id = caught.value.response.headers["X-Imagegate-Audit-Id"]
    from proxy.app import GATEWAY

    record = await server.app[GATEWAY].audit.get(audit_id)
    assert record is not None and record["outcome"] == "block"
    assert any(d["stage"] == "prompt_filter" and d["action"] == "block" for d in record["decisions"])


async def test_wrong_key_is_authentication_error(tmp_path: Path, fake_openai, start_gateway, upstream_key: str) -> None:
    fake, upstream_url = fake_openai
    _, base_url = await start_gateway(make_settings(tmp_path, upstream_url))
    async with client(base_url, key="sk-wrong") as sdk:
        with pytest.raises(openai.AuthenticationError):
            await sdk.images.generate(model="gpt-image-1", prompt="a cat")
    assert fake.received == []
