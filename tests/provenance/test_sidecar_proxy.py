"""Sidecars in the proxy: the provenance stage in sidecar mode, and `POST /v1/provenance/verify`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from provenance import (
    ManifestSigner,
    ProvenanceSettings,
    ensure_dev_credentials,
    load_signing_credentials,
    verify_image,
)
from proxy.exchange import Exchange, GeneratedImage, GenerationRequest, GenerationResult
from proxy.provenance_api import Source, pair_sidecars
from proxy.errors import InvalidRequestError
from proxy.stages.factory import full_stages
from proxy.stages.provenance import SIDECAR_MEDIA_TYPE, ProvenanceStage, sidecars
from proxy.stores.assets import sidecar_of
from tests.conftest import TENANT_KEY, make_settings
from tests.provenance.conftest import make_image, make_info

AUTH = {"Authorization": f"Bearer {TENANT_KEY}"}


@pytest.fixture()
def sidecar_settings(settings: ProvenanceSettings) -> ProvenanceSettings:
    return settings.model_copy(update={"mode": "sidecar"})


async def test_stage_in_sidecar_mode_leaves_images_untouched(
    sidecar_settings: ProvenanceSettings, root_pem: str
) -> None:
    stage = ProvenanceStage(sidecar_settings, development=True)
    await stage.start()
    png, jpeg = make_image("PNG", 64, seed=1), make_image("JPEG", 64, seed=2)
    exchange = Exchange(route="/v1/images/generations", operation="generate")
    exchange.request = GenerationRequest(operation="generate", model="demo", prompt="a lighthouse")
    exchange.result = GenerationResult(
        provider="demo",
        model="demo",
        images=[
            GeneratedImage(data=png, media_type="image/png"),
            GeneratedImage(data=b"withheld", media_type="image/png", withheld=True),
            GeneratedImage(data=jpeg, media_type="image/jpeg"),
        ],
    )
    try:
        await stage.on_response(exchange)
    finally:
        await stage.close()
    found = sidecars(exchange)
    assert sorted(found) == [0, 2]  # by index in exchange.result.images; none for the withheld one
    for index, original in ((0, png), (2, jpeg)):
        image = exchange.result.images[index]
        assert image.data == original and image.manifest_id == found[index].manifest_id
        assert found[index].media_type == SIDECAR_MEDIA_TYPE and not found[index].embedded
        report = verify_image(image.data, image.media_type, root_pem, manifest_store=found[index].data)
        assert report.state == "trusted", report.failures
    decision = next(d for d in exchange.decisions if d.stage == "provenance")
    assert decision.details["mode"] == "sidecar" and "sidecars" in decision.reason
    assert sidecar_of("0123" * 8 + ".png") == "0123" * 8 + ".png.c2pa"  # where the responder stores it


async def test_stage_in_embedded_mode_leaves_no_sidecars(settings: ProvenanceSettings) -> None:
    stage = ProvenanceStage(settings, development=True)
    await stage.start()
    exchange = Exchange(route="/v1/images/generations", operation="generate")
    exchange.request = GenerationRequest(operation="generate", model="demo", prompt="a lighthouse")
    exchange.result = GenerationResult(
        provider="demo", model="demo", images=[GeneratedImage(data=make_image("PNG", 32), media_type="image/png")]
    )
    try:
        await stage.on_response(exchange)
    finally:
        await stage.close()
    assert sidecars(exchange) == {} and exchange.result.images[0].manifest_id


def test_sidecars_pair_by_name_or_when_alone() -> None:
    images = [Source("a.png", b"A"), Source("b.jpg", b"B")]
    paired = pair_sidecars(images, [("b.jpg.c2pa", b"SB"), ("a.c2pa", b"SA")])
    assert [(s.name, s.manifest_store, s.manifest_name) for s in paired] == [
        ("a.png", b"SA", "a.c2pa"),
        ("b.jpg", b"SB", "b.jpg.c2pa"),
    ]
    assert pair_sidecars([Source("upload", b"X")], [("whatever.c2pa", b"S")])[0].manifest_store == b"S"
    with pytest.raises(InvalidRequestError, match="matches no image"):
        pair_sidecars(images, [("c.png.c2pa", b"S")])
    with pytest.raises(InvalidRequestError, match="more than one sidecar"):
        pair_sidecars(images, [("a.png.c2pa", b"S"), ("a.c2pa", b"T")])
    with pytest.raises(InvalidRequestError):
        pair_sidecars([], [("a.c2pa", b"S")])


@pytest.fixture()
def gateway_signer(tmp_path: Path) -> Iterator[ManifestSigner]:
    """A sidecar-mode signer with the development credentials the gateway under test uses."""
    dev = ensure_dev_credentials(tmp_path / "data" / "dev-keys")
    settings = ProvenanceSettings(
        cert_chain_file=dev.cert_chain_file, private_key_file=dev.private_key_file, mode="sidecar"
    )
    manifest_signer = ManifestSigner(load_signing_credentials(settings), settings)
    yield manifest_signer
    manifest_signer.close()


async def test_verify_endpoint_accepts_sidecar_parts(
    tmp_path: Path, start_gateway, gateway_signer: ManifestSigner
) -> None:
    _, base = await start_gateway(make_settings(tmp_path), stages=full_stages)
    png = make_image("PNG", 64, seed=6)
    signed = gateway_signer.sign(png, "image/png", make_info())
    assert signed.manifest_store is not None
    form = aiohttp.FormData()
    form.add_field("image", png, filename="banner.png", content_type="image/png")
    form.add_field("image", make_image("PNG", 64, seed=7), filename="plain.png", content_type="image/png")
    form.add_field("manifest", signed.manifest_store, filename="banner.png.c2pa", content_type=SIDECAR_MEDIA_TYPE)
    form.add_field("image", png + b"tail", filename="altered.png", content_type="image/png")
    form.add_field("manifest", signed.manifest_store, filename="altered.c2pa")
    async with aiohttp.ClientSession(headers=AUTH) as session:
        async with session.post(base + "/provenance/verify", data=form) as response:
            assert response.status == 200
            body = await response.json()
    results = {r["source"]: r for r in body["results"]}
    assert results["banner.png"]["state"] == "trusted" and results["banner.png"]["sidecar"] == "banner.png.c2pa"
    assert results["banner.png"]["manifest_source"] == "sidecar"
    assert results["plain.png"]["state"] == "none" and "sidecar" not in results["plain.png"]
    assert results["altered.png"]["state"] == "invalid"
    assert body["summary"] == {"images": 3, "trusted": 1, "none": 1, "invalid": 1}

    lone = aiohttp.FormData()
    lone.add_field("file", png, filename="upload.bin", content_type="image/png")
    lone.add_field("sidecar", b"not a manifest store", filename="sidecar", content_type=SIDECAR_MEDIA_TYPE)
    unmatched = aiohttp.FormData()
    unmatched.add_field("image", png, filename="a.png", content_type="image/png")
    unmatched.add_field("image", png, filename="b.png", content_type="image/png")
    unmatched.add_field("manifest", signed.manifest_store, filename="c.png.c2pa")
    async with aiohttp.ClientSession(headers=AUTH) as session:
        async with session.post(base + "/provenance/verify", data=lone) as response:
            [result] = (await response.json())["results"]
            assert result["state"] == "unreadable" and result["code"] == "invalid_sidecar"
        async with session.post(base + "/provenance/verify", data=unmatched) as response:
            assert response.status == 400
            assert "matches no image" in (await response.json())["error"]["message"]
