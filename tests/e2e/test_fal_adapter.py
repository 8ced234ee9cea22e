"""The fal upstream adapter on its own against the fake fal queue API: the request body, polling,
the URLs it refuses to follow, inline results, and fal's errors turned into imagegate's."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import pytest

from proxy.adapters.fal import FalUpstream, app_id
from proxy.errors import ContentPolicyError, UpstreamBadResponseError, UpstreamStatusError, UpstreamTimeoutError
from proxy.exchange import GenerationRequest, InputImage
from tests.fakes.fal import FakeFal
from tests.fakes.openai_upstream import make_image
from tests.fakes.provider_harness import only_loopback, serve


@pytest.fixture
async def fal() -> AsyncIterator[tuple[FakeFal, str]]:
    fake = FakeFal(pending_polls=1)
    server, url = await serve(fake.app())
    try:
        yield fake, url
    finally:
        await server.close()


async def upstream(url: str, key: str = "fal-upstream-key-id:secret", **kwargs: Any) -> FalUpstream:
    options: dict[str, Any] = {"image_url_hosts": ["127.0.0.1"], "address_policy": only_loopback, "poll_interval_s": 0.01,
                               "timeout_s": 5, "connect_timeout_s": 1}
    options.update(kwargs)
    provider = FalUpstream("fal", base_url=url, api_key=key, **options)
    await provider.start()
    return provider


def request(**kwargs: Any) -> GenerationRequest:
    fields: dict[str, Any] = {"operation": "generate", "model": "fal-ai/flux/dev", "prompt": "a red fox"}
    fields.update(kwargs)
    return GenerationRequest(**fields)


def test_app_id_drops_the_sub_path() -> None:
    assert app_id("fal-ai/flux/dev") == "fal-ai/flux"
    assert app_id("fal-ai/flux-pro/v1.1-ultra") == "fal-ai/flux-pro"
    assert app_id("fal-ai/fast-sdxl") == "fal-ai/fast-sdxl"
    assert app_id("workflows/owner/app/step") == "workflows/owner/app"


async def test_body_polling_and_cost_hint(fal) -> None:
    fake, url = fal
    provider = await upstream(url)
    mask = InputImage(make_image((16, 16)), "image/png", "mask.png", "mask")
    try:
        result = await provider.generate(request(
            n=2, size="1024x768", negative_prompt="fog", output_format="png",
            images=[InputImage(make_image((16, 16)), "image/png")], mask=mask, extra={"guidance_scale": 3.5, "prompt": "ignored"},
        ))
    finally:
        await provider.close()
    sent = fake.submitted[0]
    assert sent["model"] == "fal-ai/flux/dev" and sent["headers"]["Authorization"] == "Key fal-upstream-key-id:secret"
    body = sent["body"]
    assert body["prompt"] == "a red fox"  # a client field can never replace the screened prompt
    assert body["num_images"] == 2 and body["image_size"] == "landscape_4_3" and body["negative_prompt"] == "fog"
    assert body["image_url"].startswith("data:image/png;base64,") and body["mask_url"].startswith("data:image/png;base64,")
    assert body["guidance_scale"] == 3.5 and body["output_format"] == "png"
    assert fake.status_reads[sent["id"]] == 2  # pending once, then COMPLETED
    assert len(result.images) == 2 and all(image.media_type == "image/jpeg" for image in result.images)
    assert result.metadata["size"] == "1024x768" and result.metadata["seed"] == 1234
    assert result.metadata["cost_hint"]["billed_megapixels"] == 1 and result.metadata["cost_hint"]["images"] == 2


async def test_status_urls_on_another_host_are_never_followed(fal) -> None:
    """A submit answer pointing at a metadata address is ignored: the URLs are rebuilt from the base."""
    fake, url = fal
    fake.foreign_urls = True
    provider = await upstream(url)
    try:
        result = await provider.generate(request(size="512x512"))
    finally:
        await provider.close()
    assert len(result.images) == 1 and fake.results_read == 1


async def test_inline_data_uri_results_are_decoded_without_a_fetch(fal) -> None:
    fake, url = fal
    provider = await upstream(url)
    try:
        result = await provider.generate(request(extra={"sync_mode": True}))
    finally:
        await provider.close()
    assert result.images[0].data.startswith(b"\xff\xd8\xff") and fake.served == 0


async def test_fal_errors_become_imagegate_errors(fal) -> None:
    fake, url = fal
    provider = await upstream(url)
    try:
        fake.error_type = "content_policy_violation"
        with pytest.raises(ContentPolicyError):
            await provider.generate(request())
        fake.error_type = "image_too_large"
        with pytest.raises(UpstreamStatusError) as caught:
            await provider.generate(request())
        assert caught.value.status == 422 and b"image_too_large" in caught.value.body
        fake.error_type = None
        fake.cdn_url = "data:image/jpeg;base64,bm90IGFuIGltYWdl"  # "not an image"
        with pytest.raises(UpstreamBadResponseError, match="data URI"):
            await provider.generate(request())
    finally:
        await provider.close()
    wrong = await upstream(url, key="someone-else")
    try:
        with pytest.raises(UpstreamStatusError) as caught:
            await wrong.generate(request())
        assert caught.value.status == 401 and b"someone-else" not in caught.value.body
    finally:
        await wrong.close()


async def test_a_request_that_never_completes_times_out(fal) -> None:
    fake, url = fal
    fake.pending_polls = 10_000
    provider = await upstream(url, timeout_s=0.3)
    try:
        with pytest.raises(UpstreamTimeoutError):
            await provider.generate(request())
    finally:
        await provider.close()


def test_data_uri_of_the_input_round_trips() -> None:
    from proxy.adapters.fal import data_uri, decode_data_uri

    image = make_image((8, 8))
    assert decode_data_uri(data_uri(InputImage(image, "image/png"))) == image
    assert decode_data_uri("https://v3.fal.media/files/x.png") is None
    assert decode_data_uri("data:image/png;base64,@@@") is None
    assert base64.b64decode(data_uri(InputImage(image, "image/png")).split(",")[1]) == image
