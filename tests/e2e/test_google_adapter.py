"""The Google upstream adapter on its own against the fake Gemini API: which endpoint each model
uses, the bodies it sends, and Google's refusals and odd answers turned into imagegate's errors."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from proxy.adapters.google import GoogleUpstream
from proxy.errors import ContentPolicyError, UpstreamBadResponseError, UpstreamError, UpstreamStatusError
from proxy.exchange import GenerationRequest, InputImage
from tests.fakes.google import FakeGoogle
from tests.fakes.openai_upstream import make_image
from tests.fakes.provider_harness import serve


@pytest.fixture
async def google() -> AsyncIterator[tuple[FakeGoogle, GoogleUpstream]]:
    fake = FakeGoogle()
    server, url = await serve(fake.app())
    provider = GoogleUpstream("google", base_url=url, api_key=fake.key, timeout_s=5)
    await provider.start()
    try:
        yield fake, provider
    finally:
        await provider.close()
        await server.close()


def request(model: str, **kwargs: Any) -> GenerationRequest:
    return GenerationRequest(**{"operation": "generate", "model": model, "prompt": "a lighthouse", **kwargs})


async def test_imagen_goes_to_predict_with_its_parameters(google) -> None:
    fake, provider = google
    result = await provider.generate(request(
        "imagen-4.0-fast-generate-001", n=3, size="768x1408", negative_prompt="people",
        extra={"parameters": {"personGeneration": "dont_allow", "sampleCount": 9}},
    ))
    sent = fake.received[0]
    assert sent["path"] == "/v1beta/models/imagen-4.0-fast-generate-001:predict"
    assert sent["body"] == {"instances": [{"prompt": "a lighthouse"}], "parameters": {
        "sampleCount": 3, "aspectRatio": "9:16", "negativePrompt": "people", "personGeneration": "dont_allow"}}
    assert len(result.images) == 3 and result.metadata["cost_hint"] == {"images": 3}


async def test_gemini_makes_one_call_per_image_with_inline_inputs(google) -> None:
    fake, provider = google
    source = make_image((8, 8))
    result = await provider.generate(request(
        "gemini-2.5-flash-image", n=2, operation="edit", images=[InputImage(source, "image/png")],
        extra={"generationConfig": {"temperature": 0.2}, "safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_LOW_AND_ABOVE"}]},
    ))
    assert len(fake.received) == 2 and len(result.images) == 2
    body = fake.received[0]["body"]
    assert body["contents"][0]["parts"][0] == {"text": "a lighthouse"}
    assert base64.b64decode(body["contents"][0]["parts"][1]["inlineData"]["data"]) == source
    assert body["generationConfig"] == {"temperature": 0.2, "responseModalities": ["TEXT", "IMAGE"]}
    assert body["safetySettings"][0]["threshold"] == "BLOCK_LOW_AND_ABOVE"
    assert result.metadata["text"] == "Here is your image (1 input images)." and result.metadata["usage_metadata"]["candidatesTokenCount"] == 1290


async def test_google_refusals_are_content_policy_errors(google) -> None:
    fake, provider = google
    fake.block_reason = "PROHIBITED_CONTENT"
    with pytest.raises(ContentPolicyError):
        await provider.generate(request("gemini-2.5-flash-image"))
    fake.block_reason, fake.filter_all = None, True
    with pytest.raises(ContentPolicyError):
        await provider.generate(request("imagen-4.0-generate-001"))


async def test_google_errors_pass_through_or_become_upstream_errors(google) -> None:
    fake, provider = google
    fake.fail_status = 400
    with pytest.raises(UpstreamStatusError) as caught:
        await provider.generate(request("imagen-4.0-generate-001"))
    assert caught.value.status == 400 and b"INVALID_ARGUMENT" in caught.value.body
    fake.fail_status = 500
    with pytest.raises(UpstreamError):
        await provider.generate(request("gemini-2.5-flash-image"))


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        ({"candidates": [{"content": {"parts": [{"text": "I cannot draw that."}]}, "finishReason": "STOP"}]}, UpstreamBadResponseError),
        ({"candidates": [{"content": {"parts": []}, "finishReason": "IMAGE_SAFETY"}]}, ContentPolicyError),
        ({"candidates": [{"content": {"parts": [{"inlineData": {"mimeType": "image/png", "data": "bm90IGFuIGltYWdl"}}]}}]}, UpstreamBadResponseError),
        ({"predictions": [{"raiFilteredReason": "filtered"}, {"bytesBase64Encoded": "%%%", "mimeType": "image/png"}]}, UpstreamBadResponseError),
    ],
)
async def test_odd_answers(answer: dict[str, Any], error: type[Exception]) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response(answer)

    app = web.Application()
    app.router.add_post("/v1beta/models/{model}", handler)
    server, url = await serve(app)
    provider = GoogleUpstream("google", base_url=url, api_key="k" * 10, timeout_s=5)
    await provider.start()
    try:
        with pytest.raises(error):
            await provider.generate(request("imagen-4.0-generate-001" if "predictions" in answer else "gemini-2.5-flash-image"))
    finally:
        await provider.close()
        await server.close()


async def test_partly_filtered_imagen_answer_keeps_the_rest() -> None:
    image = base64.b64encode(make_image((8, 8))).decode()

    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"predictions": [{"raiFilteredReason": "filtered"}, {"bytesBase64Encoded": image, "mimeType": "image/png"}]})

    app = web.Application()
    app.router.add_post("/v1beta/models/{model}", handler)
    server, url = await serve(app)
    partial = GoogleUpstream("google", base_url=url, api_key="k" * 10, timeout_s=5)
    await partial.start()
    try:
        result = await partial.generate(request("imagen-4.0-generate-001", n=2))
    finally:
        await partial.close()
        await server.close()
    assert len(result.images) == 1 and result.metadata["rai_filtered"] == 1
