"""Google's Gemini API through imagegate with the official `google-genai` SDK: only `base_url` changes.

`generate_content` (Gemini image models) runs in the SDK's Gemini API mode; `generate_images`
(Imagen `:predict`) runs in its Vertex AI express mode (`vertexai=True` and an API key), the only mode
in which google-genai 3.x still offers it; the Gemini API's own `:predict` path is driven with plain
HTTP as Google's docs show it. The production chain runs (prompt filter, licences, limits, C2PA
signing); the upstream is the fake Gemini API.
"""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from google import genai
from google.genai import errors, types

from proxy.app import create_app
from proxy.settings import Settings
from provenance import verify_image
from tests.classifiers.conftest import TINY_ARCHITECTURE, TinyModels, tiny_models  # noqa: F401  (fixture)
from tests.conftest import OTHER_TENANT_KEY, TENANT_KEY
from tests.fakes.google import FakeGoogle
from tests.fakes.openai_upstream import make_image
from tests.fakes.provider_harness import Counters, count_audits, counting_full_stages, provider_settings, serve

IMAGEN = "imagen-4.0-generate-001"
GEMINI = "gemini-2.5-flash-image"
BLOCKED = "a n.u.d.3 photo of a schoolgirl"

pytestmark = [
    pytest.mark.filterwarnings("ignore:The generate_images method is deprecated"),
    pytest.mark.filterwarnings("ignore:Inheritance class AiohttpClientSession"),
]


def blocking_classifier(models: TinyModels) -> dict[str, Any]:
    """The tiny random-weight CLIP model with `sexual` forced to fire and block (as in
    tests/e2e/test_moderation_stages.py): every image it sees is blocked."""
    others = ["minors", "violence", "self_harm", "hate", "weapons", "drugs"]
    return {
        "enabled": True, "required": True, "model": TINY_ARCHITECTURE, "pretrained": None,
        "checkpoint": str(models.checkpoint), "actions": {"sexual": "block"},
        "concepts": {"disabled_categories": others, "threshold_offsets": {"sexual": -10.0}},
    }


async def start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **overrides: Any) -> AsyncIterator[dict[str, Any]]:
    fake = FakeGoogle()
    monkeypatch.setenv("IMAGEGATE_TEST_PROVIDER_KEY", fake.key)
    upstream, upstream_url = await serve(fake.app())
    settings = provider_settings(tmp_path, "google", "google", upstream_url, [IMAGEN, GEMINI])
    if overrides:
        settings = Settings.model_validate({**settings.model_dump(mode="json"), **overrides})
    counters, calls = Counters(), Counter[str]()
    app = create_app(settings, stages=counting_full_stages(calls))
    count_audits(app, counters)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield {"fake": fake, "counters": counters, "calls": calls, "base": str(server.make_url("/google")),
               "trust": (tmp_path / "data" / "dev-keys" / "dev-root-ca.pem")}
    finally:
        await server.close()
        await upstream.close()


@pytest.fixture
async def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[dict[str, Any]]:
    async for value in start(tmp_path, monkeypatch):
        yield value


def gemini(base: str, key: str = TENANT_KEY) -> genai.Client:
    return genai.Client(api_key=key, http_options=types.HttpOptions(base_url=base))


def vertex(base: str, key: str = TENANT_KEY) -> genai.Client:
    return genai.Client(vertexai=True, api_key=key, http_options=types.HttpOptions(base_url=base))


def assert_trusted(data: bytes, env: dict[str, Any], audit_id: str) -> None:
    report = verify_image(data, trust_anchors_pem=env["trust"].read_text())
    assert report.state == "trusted", report.failures
    assert report.imagegate["audit_id"] == audit_id


async def test_imagen_generate_images_signed_audited_and_priced(env) -> None:
    response = await vertex(env["base"]).aio.models.generate_images(
        model=IMAGEN, prompt="a lighthouse at dawn", config=types.GenerateImagesConfig(number_of_images=2, aspect_ratio="16:9"),
    )
    assert response.generated_images is not None and len(response.generated_images) == 2
    [record] = env["counters"].audits
    for generated in response.generated_images:
        assert generated.image is not None and generated.image.image_bytes is not None
        assert_trusted(generated.image.image_bytes, env, record["id"])
    sent = env["fake"].received[0]
    assert sent["path"] == f"/v1beta/models/{IMAGEN}:predict"
    assert sent["headers"]["x-goog-api-key"] == env["fake"].key  # the provider key, never the tenant's
    assert sent["body"] == {"instances": [{"prompt": "a lighthouse at dawn"}], "parameters": {"sampleCount": 2, "aspectRatio": "16:9"}}
    assert record["provider"] == "google" and record["model"] == IMAGEN and record["status"] == 200
    assert record["cost_estimate_usd"] == pytest.approx(0.08) and record["cost_usd"] == pytest.approx(0.08)  # 2 x $0.04
    assert env["calls"] == Counter({"output_classifier": 1, "provenance": 1})


async def test_gemini_api_predict_with_plain_http_and_key_parameter(env) -> None:
    body = {"instances": [{"prompt": "a quiet harbour"}], "parameters": {"sampleCount": 1, "personGeneration": "dont_allow"}}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{env['base']}/v1beta/models/{IMAGEN}:predict", params={"key": TENANT_KEY}, json=body) as response:
            assert response.status == 200, await response.text()
            answer = await response.json()
            audit_id = response.headers["X-Imagegate-Audit-Id"]
    [prediction] = answer["predictions"]
    assert prediction["mimeType"] == "image/png"
    assert_trusted(base64.b64decode(prediction["bytesBase64Encoded"]), env, audit_id)
    assert env["fake"].received[0]["body"]["parameters"] == {"sampleCount": 1, "personGeneration": "dont_allow"}


async def test_gemini_generate_content_text_to_image(env) -> None:
    response = await gemini(env["base"]).aio.models.generate_content(model=GEMINI, contents="a red fox in the snow")
    parts = response.candidates[0].content.parts
    images = [part.inline_data for part in parts if part.inline_data is not None]
    assert [part.text for part in parts if part.text] == ["Here is your image (0 input images)."]
    [record] = env["counters"].audits
    assert len(images) == 1 and images[0].mime_type == "image/png"
    assert_trusted(images[0].data, env, record["id"])
    sent = env["fake"].received[0]
    assert sent["path"] == f"/v1beta/models/{GEMINI}:generateContent"
    assert sent["body"]["contents"] == [{"role": "user", "parts": [{"text": "a red fox in the snow"}]}]
    assert record["model"] == GEMINI and record["cost_usd"] == pytest.approx(0.039)
    assert response.usage_metadata is not None and response.usage_metadata.candidates_token_count == 1290


async def test_gemini_edit_sends_the_screened_input_image(env) -> None:
    source = make_image((32, 32), "png", (0, 0, 255))
    response = await gemini(env["base"]).aio.models.generate_content(
        model=GEMINI,
        contents=[types.Part.from_bytes(data=source, mime_type="image/png"), "make the sky orange"],
        config=types.GenerateContentConfig(response_modalities=["IMAGE", "TEXT"]),
    )
    [record] = env["counters"].audits
    image = next(part.inline_data for part in response.candidates[0].content.parts if part.inline_data is not None)
    report = verify_image(image.data, trust_anchors_pem=env["trust"].read_text())
    assert report.state == "trusted", report.failures
    assert len(report.ingredients) == 1  # the input image is recorded as an ingredient
    sent = env["fake"].received[0]["body"]
    text, inline = sent["contents"][0]["parts"]
    assert text == {"text": "make the sky orange"}
    assert base64.b64decode(inline["inlineData"]["data"]) == source
    assert sent["generationConfig"]["responseModalities"] == ["IMAGE", "TEXT"]
    assert record["input_images"][0]["bytes"] == len(source)
    assert any(d["stage"] == "input_images" for d in record["decisions"])


async def test_blocked_prompt_is_a_google_error_and_costs_nothing(env) -> None:
    with pytest.raises(errors.ClientError) as caught:
        await vertex(env["base"]).aio.models.generate_images(model=IMAGEN, prompt=BLOCKED)
    assert caught.value.code == 400 and caught.value.status == "INVALID_ARGUMENT"
    assert "schoolgirl" not in (caught.value.message or "")
    with pytest.raises(errors.ClientError) as caught:
        await gemini(env["base"]).aio.models.generate_content(model=GEMINI, contents=["a nice day", BLOCKED])
    assert caught.value.code == 400
    assert env["fake"].received == []
    assert [record["outcome"] for record in env["counters"].audits] == ["block", "block"]
    assert all(not record["cost_usd"] for record in env["counters"].audits)  # nothing was generated


@pytest.mark.parametrize("field", ["systemInstruction", "contents"])
async def test_every_text_part_is_screened(env, field: str) -> None:
    """A blocked text hidden in a system instruction or an earlier turn is found too."""
    body: dict[str, Any] = {"contents": [{"role": "user", "parts": [{"text": "draw a garden"}]}]}
    if field == "systemInstruction":
        body["systemInstruction"] = {"parts": [{"text": BLOCKED}]}
    else:
        body["contents"].insert(0, {"role": "user", "parts": [{"text": BLOCKED}]})
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{env['base']}/v1beta/models/{GEMINI}:generateContent", headers={"x-goog-api-key": TENANT_KEY}, json=body) as response:
            assert response.status == 400
            assert (await response.json())["error"]["status"] == "INVALID_ARGUMENT"
    assert env["fake"].received == []


async def test_images_by_reference_are_refused(env) -> None:
    body = {"contents": [{"parts": [{"text": "edit this"}, {"fileData": {"mimeType": "image/png", "fileUri": "https://example.com/a.png"}}]}]}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{env['base']}/v1beta/models/{GEMINI}:generateContent", headers={"x-goog-api-key": TENANT_KEY}, json=body) as response:
            error = (await response.json())["error"]
    assert response.status == 400 and error["code"] == 400 and "fileData" in error["message"]
    assert env["fake"].received == []


async def test_upstream_errors_keep_google_shape(env) -> None:
    fake = env["fake"]
    fake.fail_status = 429  # Google's own 4xx goes back unchanged
    with pytest.raises(errors.ClientError) as caught:
        await gemini(env["base"]).aio.models.generate_content(model=GEMINI, contents="a boat")
    assert caught.value.code == 429 and caught.value.status == "RESOURCE_EXHAUSTED"
    fake.fail_status = 503  # a provider failure is imagegate's 502 in Google's shape
    with pytest.raises(errors.ServerError) as server_error:
        await vertex(env["base"]).aio.models.generate_images(model=IMAGEN, prompt="a boat")
    assert server_error.value.code == 502 and server_error.value.status == "UNAVAILABLE"
    fake.fail_status = None
    fake.block_reason = "SAFETY"  # Google's own refusal is a content-policy error
    with pytest.raises(errors.ClientError) as caught:
        await gemini(env["base"]).aio.models.generate_content(model=GEMINI, contents="a boat")
    assert caught.value.code == 400 and "moderation" in (caught.value.message or "")
    fake.block_reason = None
    fake.filter_all = True  # every Imagen image removed by Google's filter
    with pytest.raises(errors.ClientError):
        await vertex(env["base"]).aio.models.generate_images(model=IMAGEN, prompt="a boat")
    assert [record["status"] for record in env["counters"].audits] == [429, 502, 400, 400]


async def test_keys_and_unknown_models(env) -> None:
    with pytest.raises(errors.ClientError) as caught:
        await gemini(env["base"], "wrong-key").aio.models.generate_content(model=GEMINI, contents="a boat")
    assert caught.value.code == 401 and caught.value.status == "UNAUTHENTICATED"
    with pytest.raises(errors.ClientError) as caught:
        await gemini(env["base"], OTHER_TENANT_KEY).aio.models.generate_content(model="gemini-9-ultra-image", contents="a boat")
    assert caught.value.code == 404 and caught.value.status == "NOT_FOUND"
    assert env["fake"].received == []


async def test_unsafe_input_image_stops_the_edit_before_upstream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_models: TinyModels) -> None:
    async for env in start(tmp_path, monkeypatch, classifier=blocking_classifier(tiny_models)):
        with pytest.raises(errors.ClientError) as caught:
            await gemini(env["base"]).aio.models.generate_content(
                model=GEMINI, contents=[types.Part.from_bytes(data=make_image(), mime_type="image/png"), "make it blue"],
            )
        assert caught.value.code == 400 and "input image" in (caught.value.message or "")
        assert env["fake"].received == []
        [record] = env["counters"].audits
        assert any(d["stage"] == "input_images" and d["action"] == "block" for d in record["decisions"])
