"""Sidecar manifests on the surfaces that answer with image bytes (Stability, Google): in provenance
sidecar mode the image comes back untouched and its C2PA manifest store comes with it, inline
where the body has a place per image (Stability's JSON `c2pa_manifest_b64`, Imagen's
`c2paManifestBase64Encoded`) or as a `Link: <signed URL>; rel="c2pa-manifest"` header where it has
none (Stability's raw bytes, Gemini's parts). Each store verifies as trusted against its image.
In embedded mode none of this appears. Plain HTTP as the providers' docs show, and the official
google-genai SDK, which must not notice anything."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from google import genai
from google.genai import types
from yarl import URL

from provenance import verify_image
from provenance.media import has_c2pa_segment
from proxy.app import create_app
from proxy.settings import Settings
from proxy.stages.factory import full_stages
from tests.conftest import TENANT_KEY
from tests.fakes.google import FakeGoogle
from tests.fakes.provider_harness import provider_settings, serve
from tests.fakes.stability import FakeStability

pytestmark = pytest.mark.filterwarnings("ignore:Inheritance class AiohttpClientSession")

IMAGEN = "imagen-4.0-generate-001"
GEMINI = "gemini-2.5-flash-image"


async def start(tmp_path: Path, mode: str, kind: str, fake: Any, models: list[str]) -> AsyncIterator[dict[str, Any]]:
    upstream, upstream_url = await serve(fake.app())
    data = provider_settings(tmp_path, kind, kind, upstream_url, models).model_dump(mode="json")
    data["provenance"] = {"mode": mode}
    server = TestServer(create_app(Settings.model_validate(data), stages=full_stages), host="127.0.0.1")
    await server.start_server()
    try:
        yield {
            "mode": mode,
            "base": str(server.make_url(f"/{kind}")),
            "root": (tmp_path / "data" / "dev-keys" / "dev-root-ca.pem").read_text(),
        }
    finally:
        await server.close()
        await upstream.close()


@pytest.fixture(params=["sidecar", "embedded"])
async def stability(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[dict[str, Any]]:
    fake = FakeStability()
    monkeypatch.setenv("IMAGEGATE_TEST_PROVIDER_KEY", fake.key)
    async for env in start(tmp_path, request.param, "stability", fake, ["stable-image-core"]):
        yield env


@pytest.fixture(params=["sidecar", "embedded"])
async def google(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[dict[str, Any]]:
    fake = FakeGoogle()
    monkeypatch.setenv("IMAGEGATE_TEST_PROVIDER_KEY", fake.key)
    async for env in start(tmp_path, request.param, "google", fake, [IMAGEN, GEMINI]):
        yield env


def assert_bound(image: bytes, media_type: str, store: bytes, env: dict[str, Any]) -> None:
    """The image is untouched (no embedded manifest) and the sidecar verifies as trusted with it."""
    assert not has_c2pa_segment(image, media_type)
    report = verify_image(image, media_type, env["root"], manifest_store=store)
    assert report.state == "trusted" and report.manifest_source == "sidecar", report.failures
    assert report.imagegate is not None and report.imagegate["audit_id"].startswith("aud_")


async def linked_stores(http: aiohttp.ClientSession, links: list[str]) -> list[bytes]:
    """The stores a `Link` header names, fetched through their signed URLs (and only those)."""
    stores = []
    for value in links:
        for link in value.split(", "):
            target, rel = link.split(">; ", 1)
            assert rel == 'rel="c2pa-manifest"'
            url = URL(target.removeprefix("<"))
            async with http.get(url) as response:
                assert response.status == 200 and response.content_type == "application/c2pa"
                stores.append(await response.read())
            async with http.get(url.update_query(signature="0" * 64)) as response:
                assert response.status == 403
    return stores


def stability_form() -> aiohttp.FormData:
    form = aiohttp.FormData(default_to_multipart=True)
    form.add_field("prompt", "a lighthouse at dusk")
    form.add_field("output_format", "png")
    return form


async def test_stability_raw_answer_links_its_sidecar(stability: dict[str, Any]) -> None:
    headers = {"Authorization": f"Bearer {TENANT_KEY}", "Accept": "image/*"}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{stability['base']}/v2beta/stable-image/generate/core", headers=headers, data=stability_form()) as response:
            assert response.status == 200, await response.text()
            image, links = await response.read(), response.headers.getall("Link", [])
            assert response.content_type == "image/png"
        if stability["mode"] == "embedded":
            assert links == [] and has_c2pa_segment(image, "image/png")
            return
        [store] = await linked_stores(http, links)
    assert_bound(image, "image/png", store, stability)


async def test_stability_json_answer_carries_its_sidecar(stability: dict[str, Any]) -> None:
    headers = {"Authorization": f"Bearer {TENANT_KEY}", "Accept": "application/json"}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{stability['base']}/v2beta/stable-image/generate/core", headers=headers, data=stability_form()) as response:
            assert response.status == 200, await response.text()
            body, links = await response.json(), response.headers.getall("Link", [])
    assert links == []  # the body has the store; nothing stored for it
    image = base64.b64decode(body["image"])
    if stability["mode"] == "embedded":
        assert set(body) == {"image", "finish_reason", "seed"} and has_c2pa_segment(image, "image/png")
        return
    assert set(body) == {"image", "finish_reason", "seed", "c2pa_manifest_b64"}
    assert_bound(image, "image/png", base64.b64decode(body["c2pa_manifest_b64"]), stability)


async def test_imagen_predictions_carry_their_sidecars(google: dict[str, Any]) -> None:
    body = {"instances": [{"prompt": "a quiet harbour"}], "parameters": {"sampleCount": 2}}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{google['base']}/v1beta/models/{IMAGEN}:predict", params={"key": TENANT_KEY}, json=body) as response:
            assert response.status == 200, await response.text()
            answer, links = await response.json(), response.headers.getall("Link", [])
    assert links == [] and len(answer["predictions"]) == 2
    stores = []
    for prediction in answer["predictions"]:
        image = base64.b64decode(prediction["bytesBase64Encoded"])
        if google["mode"] == "embedded":
            assert set(prediction) == {"bytesBase64Encoded", "mimeType"}
            continue
        store = base64.b64decode(prediction["c2paManifestBase64Encoded"])
        assert_bound(image, prediction["mimeType"], store, google)
        stores.append(store)
    assert google["mode"] == "embedded" or stores[0] != stores[1]  # one manifest per image


async def test_gemini_answer_links_one_sidecar_per_image_and_the_sdk_is_unaffected(google: dict[str, Any]) -> None:
    body = {"contents": [{"role": "user", "parts": [{"text": "a red kite over a green hill"}]}]}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{google['base']}/v1beta/models/{GEMINI}:generateContent", headers={"x-goog-api-key": TENANT_KEY}, json=body) as response:
            assert response.status == 200, await response.text()
            answer, links = await response.json(), response.headers.getall("Link", [])
        parts = [part["inlineData"] for part in answer["candidates"][0]["content"]["parts"] if "inlineData" in part]
        assert parts and all(set(part) == {"mimeType", "data"} for part in parts)  # Gemini's shape only
        if google["mode"] == "embedded":
            assert links == []
        else:
            stores = await linked_stores(http, links)
            assert len(stores) == len(parts)
            for part, store in zip(parts, stores, strict=True):
                assert_bound(base64.b64decode(part["data"]), part["mimeType"], store, google)

    client = genai.Client(api_key=TENANT_KEY, http_options=types.HttpOptions(base_url=google["base"]))
    response = await client.aio.models.generate_content(model=GEMINI, contents="a red kite over a green hill")
    images = [part.inline_data.data for part in response.candidates[0].content.parts if part.inline_data]
    assert images and all(has_c2pa_segment(image, "image/png") == (google["mode"] == "embedded") for image in images)
