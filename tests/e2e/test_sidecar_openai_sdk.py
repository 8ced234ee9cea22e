"""Sidecar manifests delivered to OpenAI clients, through the real `openai` SDK and real signing.

`provenance.mode: sidecar` releases the image bytes untouched and names the C2PA manifest store
beside them: `c2pa_manifest_url` (a signed `/v1/assets/<asset>.c2pa` URL, also advertised on the
image as `Link: rel="c2pa-manifest"`) for URL responses, `c2pa_manifest_b64` for base64 ones. `both`
embeds and names the store; `embedded` adds nothing. Every store must verify, against the image as
delivered, as trusted under the development root."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from yarl import URL

from provenance import verify_image
from provenance.media import has_c2pa_segment
from proxy.app import GATEWAY
from proxy.stages.factory import full_stages
from tests.conftest import TENANT_KEY, make_settings
from tests.fakes.openai_upstream import make_image

URL_FIELD, B64_FIELD = "c2pa_manifest_url", "c2pa_manifest_b64"


def trust_anchor(tmp_path: Path) -> str:
    return (tmp_path / "data" / "dev-keys" / "dev-root-ca.pem").read_text()


def upstream_image(index: int) -> bytes:
    """What the fake OpenAI returns as image `index` of a PNG answer (deterministic)."""
    return make_image((64, 64), "png", (40 * index % 255, 80, 120))


async def generate(tmp_path: Path, start_gateway, upstream_url: str, mode: str, response_format: str, n: int = 2) -> tuple[Any, Any, Any]:
    """(gateway server, parsed `ImagesResponse`, raw headers) for one generation in `mode`."""
    settings = make_settings(tmp_path, upstream_url, provenance={"mode": mode})
    server, base_url = await start_gateway(settings, stages=full_stages)
    async with openai.AsyncOpenAI(base_url=base_url, api_key=TENANT_KEY, max_retries=0) as sdk:
        raw = await sdk.images.with_raw_response.generate(
            model="gpt-image-1", prompt="a quiet harbour", n=n, response_format=response_format  # type: ignore[arg-type]
        )
    return server, raw.parse(), raw.headers


async def fetch(url: str) -> tuple[int, bytes, Any]:
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as response:
            return response.status, await response.read(), response.headers


def link_target(headers: Any) -> str:
    """The target of the response's `rel="c2pa-manifest"` link."""
    [link] = [value for value in headers.getall("Link", []) if 'rel="c2pa-manifest"' in value]
    return link.split(">", 1)[0].removeprefix("<")


async def test_sidecar_mode_url_response_serves_untouched_images_and_signed_manifests(
    tmp_path: Path, fake_openai, start_gateway, upstream_key: str
) -> None:
    _, upstream_url = fake_openai
    server, result, headers = await generate(tmp_path, start_gateway, upstream_url, "sidecar", "url")
    record = await server.app[GATEWAY].audit.get(headers["X-Imagegate-Audit-Id"])
    assert len(result.data) == 2
    for index, item in enumerate(result.data):
        # The SDK parsed the answer and keeps the extension field.
        assert isinstance(item, openai.types.Image) and item.b64_json is None
        manifest_url = item.model_extra[URL_FIELD]
        assert item.model_dump()[URL_FIELD] == manifest_url and B64_FIELD not in item.model_dump()
        image_name = URL(item.url).path.rsplit("/", 1)[1]
        assert URL(manifest_url).path == f"/v1/assets/{image_name}.c2pa"
        assert URL(manifest_url).query.keys() == {"expires", "signature"}

        status, image, image_headers = await fetch(item.url)
        assert status == 200 and image_headers["Content-Type"] == "image/png"
        assert image == upstream_image(index)  # untouched: the provider's bytes exactly
        assert not has_c2pa_segment(image, "image/png")
        assert verify_image(image, "image/png", trust_anchor(tmp_path)).state == "none"
        assert URL(link_target(image_headers)).path == URL(manifest_url).path

        status, store, store_headers = await fetch(manifest_url)
        assert status == 200 and store_headers["Content-Type"] == "application/c2pa"
        assert store_headers["X-Content-Type-Options"] == "nosniff"
        report = verify_image(image, "image/png", trust_anchor(tmp_path), manifest_store=store)
        assert report.state == "trusted", report.failures
        assert report.manifest_source == "sidecar"
        assert report.active_manifest == record["images"][index]["manifest_id"]
        assert report.imagegate["audit_id"] == record["id"]
        # The Link header's URL is a second, equally valid signed URL of the same store.
        assert (await fetch(link_target(image_headers)))[1] == store
        # The store binds to these bytes only.
        altered = verify_image(upstream_image(index + 1), "image/png", trust_anchor(tmp_path), manifest_store=store)
        assert altered.state == "invalid"


async def test_sidecar_mode_b64_response_carries_the_store(
    tmp_path: Path, fake_openai, start_gateway, upstream_key: str
) -> None:
    _, upstream_url = fake_openai
    _, result, _ = await generate(tmp_path, start_gateway, upstream_url, "sidecar", "b64_json")
    for index, item in enumerate(result.data):
        image = base64.b64decode(item.b64_json)
        assert image == upstream_image(index) and item.url is None
        assert URL_FIELD not in item.model_extra
        store = base64.b64decode(item.model_extra[B64_FIELD], validate=True)
        report = verify_image(image, "image/png", trust_anchor(tmp_path), manifest_store=store)
        assert report.state == "trusted", report.failures


@pytest.mark.parametrize("response_format", ["url", "b64_json"])
async def test_both_mode_embeds_and_delivers_the_sidecar(
    tmp_path: Path, fake_openai, start_gateway, upstream_key: str, response_format: str
) -> None:
    _, upstream_url = fake_openai
    _, result, _ = await generate(tmp_path, start_gateway, upstream_url, "both", response_format, n=1)
    [item] = result.data
    if response_format == "url":
        status, image, image_headers = await fetch(item.url)
        assert status == 200
        status, store, _ = await fetch(item.model_extra[URL_FIELD])
        assert status == 200 and URL(link_target(image_headers)).path == URL(item.model_extra[URL_FIELD]).path
        assert B64_FIELD not in item.model_extra
    else:
        image = base64.b64decode(item.b64_json)
        store = base64.b64decode(item.model_extra[B64_FIELD])
        assert URL_FIELD not in item.model_extra
    embedded = verify_image(image, "image/png", trust_anchor(tmp_path))
    assert embedded.state == "trusted" and embedded.manifest_source == "embedded", embedded.failures
    beside = verify_image(image, "image/png", trust_anchor(tmp_path), manifest_store=store)
    assert beside.state == "trusted" and beside.manifest_source == "sidecar", beside.failures
    assert beside.active_manifest == embedded.active_manifest


@pytest.mark.parametrize("response_format", ["url", "b64_json"])
async def test_embedded_mode_adds_no_fields_and_no_link(
    tmp_path: Path, fake_openai, start_gateway, upstream_key: str, response_format: str
) -> None:
    _, upstream_url = fake_openai
    _, result, _ = await generate(tmp_path, start_gateway, upstream_url, "embedded", response_format, n=1)
    [item] = result.data
    assert not (item.model_extra or {}) and not {URL_FIELD, B64_FIELD} & set(item.model_dump())
    if response_format == "url":
        status, image, headers = await fetch(item.url)
        assert status == 200 and "Link" not in headers
        name = URL(item.url).path.rsplit("/", 1)[1]
        assert not (tmp_path / "data" / "assets" / f"{name}.c2pa").exists()
    else:
        image = base64.b64decode(item.b64_json)
    assert verify_image(image, "image/png", trust_anchor(tmp_path)).state == "trusted"


async def test_sidecar_urls_are_refused_like_asset_urls_when_expired_or_forged(
    tmp_path: Path, fake_openai, start_gateway, upstream_key: str
) -> None:
    _, upstream_url = fake_openai
    server, result, _ = await generate(tmp_path, start_gateway, upstream_url, "sidecar", "url", n=1)
    assets = server.app[GATEWAY].assets
    [item] = result.data
    manifest_url = URL(item.model_extra[URL_FIELD])
    name = manifest_url.path.rsplit("/", 1)[1]
    image_url = URL(item.url)
    expires = manifest_url.query["expires"]
    past = 1_000_000_000
    refused = {
        "forged": manifest_url.update_query(signature="0" * 64),
        "expired": manifest_url.update_query(expires=str(past), signature=assets.sign(name, past)),
        "extended": manifest_url.update_query(expires=str(int(expires) + 3600)),
        "image's signature": manifest_url.update_query(expires=image_url.query["expires"], signature=image_url.query["signature"]),
        "unsigned": manifest_url.with_query(None),
    }
    for why, url in refused.items():
        status, body, _ = await fetch(str(url))
        assert status == 403, why
        assert b"invalid_signature" in body and b"jumb" not in body, why
    # The sidecar's signature does not open the image either.
    status, _, _ = await fetch(str(image_url.update_query(expires=expires, signature=manifest_url.query["signature"])))
    assert status == 403
    status, _, _ = await fetch(str(manifest_url))
    assert status == 200
