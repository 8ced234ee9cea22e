"""Every released image carries imagegate's signed manifest; upstream manifests survive as ingredients."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import openai
import pytest
from aiohttp import web

from proxy.app import GATEWAY
from proxy.stages.factory import full_stages
from provenance import verify_image
from tests.conftest import TENANT_KEY, make_settings
from tests.fakes.openai_upstream import make_image

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "c2pa"


def trust_anchor(tmp_path: Path) -> str:
    return (tmp_path / "data" / "dev-keys" / "dev-root-ca.pem").read_text()


async def test_generated_images_are_signed_and_trusted_under_the_dev_root(
    tmp_path: Path, fake_openai, start_gateway, upstream_key: str
) -> None:
    _, upstream_url = fake_openai
    server, base_url = await start_gateway(make_settings(tmp_path, upstream_url), stages=full_stages)
    async with openai.AsyncOpenAI(base_url=base_url, api_key=TENANT_KEY, max_retries=0) as sdk:
        raw = await sdk.images.with_raw_response.generate(model="gpt-image-1", prompt="a quiet harbour", n=2, output_format="webp")
    result = raw.parse()
    record = await server.app[GATEWAY].audit.get(raw.headers["X-Imagegate-Audit-Id"])
    for index, item in enumerate(result.data):
        report = verify_image(base64.b64decode(item.b64_json), trust_anchors_pem=trust_anchor(tmp_path))
        assert report.state == "trusted", report.failures
        assert report.digital_source_type.endswith("trainedAlgorithmicMedia")
        assert report.imagegate["audit_id"] == record["id"]
        assert report.imagegate["policy_version"] == record["policy_version"]
        assert record["images"][index]["manifest_id"] == report.active_manifest
    assert any(d["stage"] == "provenance" and "DEVELOPMENT" in d["reason"] for d in record["decisions"])


async def test_ed25519_development_certificate_through_the_openai_sdk(
    tmp_path: Path, fake_openai, start_gateway, upstream_key: str
) -> None:
    """`provenance.algorithm: ed25519` with no certificate configured: an Ed25519 dev certificate."""
    _, upstream_url = fake_openai
    settings = make_settings(tmp_path, upstream_url, provenance={"algorithm": "ed25519"})
    _, base_url = await start_gateway(settings, stages=full_stages)
    async with openai.AsyncOpenAI(base_url=base_url, api_key=TENANT_KEY, max_retries=0) as sdk:
        result = await sdk.images.generate(model="gpt-image-1", prompt="a quiet harbour", output_format="jpeg")
    report = verify_image(base64.b64decode(result.data[0].b64_json), trust_anchors_pem=trust_anchor(tmp_path))
    assert report.state == "trusted", report.failures
    assert report.signer is not None and report.signer.algorithm == "Ed25519"


def test_algorithms_without_a_development_certificate_need_one_configured(tmp_path: Path) -> None:
    from proxy.settings import ConfigError
    from proxy.stages.provenance import provenance_settings

    with pytest.raises(ConfigError, match="es384 needs your own certificate"):
        provenance_settings({"algorithm": "es384"}, tmp_path, environ={})
    assert not (tmp_path / "dev-keys").exists()  # refused before anything was written
    settings, development = provenance_settings({"algorithm": "ed25519"}, tmp_path, environ={})
    assert development and settings.algorithm == "ed25519"
    assert (tmp_path / "dev-keys" / "dev-signing-chain.pem").is_file()


async def test_edit_inputs_become_ingredients(tmp_path: Path, fake_openai, start_gateway, upstream_key: str) -> None:
    _, upstream_url = fake_openai
    _, base_url = await start_gateway(make_settings(tmp_path, upstream_url), stages=full_stages)
    async with openai.AsyncOpenAI(base_url=base_url, api_key=TENANT_KEY, max_retries=0) as sdk:
        result = await sdk.images.edit(
            model="gpt-image-1",
            image=[("a.png", make_image((32, 32)), "image/png"), ("b.png", make_image((32, 32), colour=(1, 2, 3)), "image/png")],
            prompt="merge them",
        )
    report = verify_image(base64.b64decode(result.data[0].b64_json), trust_anchors_pem=trust_anchor(tmp_path))
    assert report.state == "trusted", report.failures
    assert sorted(i.title for i in report.ingredients) == ["a.png", "b.png"]


@pytest.mark.skipif(not FIXTURES.exists(), reason="shared/fixtures/c2pa is not beside the repository")
async def test_openai_manifest_is_kept_as_an_ingredient(tmp_path: Path, fake_openai, start_gateway, upstream_key: str) -> None:
    fake, upstream_url = fake_openai
    upstream_image = (FIXTURES / "openai-chatgpt-umrs-logo.png").read_bytes()

    async def openai_signed(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"created": 1, "data": [{"b64_json": base64.b64encode(upstream_image).decode()}]})

    fake.handler = openai_signed
    _, base_url = await start_gateway(make_settings(tmp_path, upstream_url), stages=full_stages)
    async with openai.AsyncOpenAI(base_url=base_url, api_key=TENANT_KEY, max_retries=0) as sdk:
        result = await sdk.images.generate(model="gpt-image-1", prompt="a logo")
    report = verify_image(base64.b64decode(result.data[0].b64_json), trust_anchors_pem=trust_anchor(tmp_path))
    assert report.state == "trusted", report.failures
    upstream = [i for i in report.ingredients if i.has_manifest]
    assert len(upstream) == 1 and upstream[0].relationship == "parentOf"
    assert report.manifest_count >= 3  # OpenAI's two manifests and imagegate's


async def test_a_failing_signer_releases_no_image(tmp_path: Path, fake_openai, start_gateway, upstream_key: str) -> None:
    _, upstream_url = fake_openai
    server, base_url = await start_gateway(make_settings(tmp_path, upstream_url), stages=full_stages)
    stage = next(s for s in server.app[GATEWAY].pipeline.stages if s.name == "provenance")

    def broken_sign(*args, **kwargs):
        raise RuntimeError("HSM unreachable")

    stage.signer.sign = broken_sign
    async with openai.AsyncOpenAI(base_url=base_url, api_key=TENANT_KEY, max_retries=0) as sdk:
        with pytest.raises(openai.InternalServerError) as caught:
            await sdk.images.generate(model="gpt-image-1", prompt="a cat")
    assert caught.value.status_code == 503
    assert "b64_json" not in json.dumps(caught.value.body)
    record = await server.app[GATEWAY].audit.get(caught.value.response.headers["X-Imagegate-Audit-Id"])
    assert record["outcome"] == "error"
    assert all(not image["released"] for image in record["images"])
