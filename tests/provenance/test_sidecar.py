"""Sidecar manifest stores (`provenance.mode: sidecar | both`): signing, and verifying with them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from provenance import (
    Ingredient,
    ManifestSigner,
    ProvenanceSettings,
    VerificationError,
    load_signing_credentials,
    verify_image,
)
from provenance.containers import looks_like_manifest_store
from tests.provenance.conftest import FORMATS, make_image, make_info
from tests.provenance.test_sign_verify import pixel_offset

MEDIA_TYPES = list(FORMATS.values())


def signer_for(settings: ProvenanceSettings, mode: str, *, data_hashed: bool = True) -> ManifestSigner:
    with_mode = settings.model_copy(update={"mode": mode})
    return ManifestSigner(load_signing_credentials(with_mode), with_mode, data_hashed=data_hashed)


@pytest.fixture(scope="module")
def sidecar_signer(settings: ProvenanceSettings) -> Iterator[ManifestSigner]:
    manifest_signer = signer_for(settings, "sidecar")
    yield manifest_signer
    manifest_signer.close()


@pytest.fixture(scope="module")
def both_signer(settings: ProvenanceSettings) -> Iterator[ManifestSigner]:
    manifest_signer = signer_for(settings, "both")
    yield manifest_signer
    manifest_signer.close()


def test_mode_defaults_to_embedded_and_is_validated() -> None:
    assert ProvenanceSettings().mode == "embedded"
    assert ProvenanceSettings(mode="sidecar").mode == "sidecar"
    with pytest.raises(ValueError):
        ProvenanceSettings(mode="beside")  # type: ignore[arg-type]


def test_embedded_mode_returns_no_sidecar(signer: ManifestSigner, images: dict[str, bytes]) -> None:
    signed = signer.sign(images["image/png"], "image/png", make_info())
    assert signed.embedded and signed.manifest_store is None


@pytest.mark.parametrize("media_type", MEDIA_TYPES)
def test_sidecar_leaves_the_image_untouched_and_verifies_trusted_with_it(
    sidecar_signer: ManifestSigner, images: dict[str, bytes], root_pem: str, media_type: str
) -> None:
    original = images[media_type]
    signed = sidecar_signer.sign(original, media_type, make_info())
    assert signed.data == original and not signed.embedded and signed.bytes_added == 0
    assert signed.manifest_store is not None and looks_like_manifest_store(signed.manifest_store)
    assert len(signed.manifest_store) < 8 * 1024

    report = verify_image(signed.data, media_type, root_pem, manifest_store=signed.manifest_store)
    assert report.state == "trusted", report.failures
    assert report.manifest_source == "sidecar"
    assert report.active_manifest == signed.manifest_id
    assert report.imagegate is not None and report.imagegate["audit_id"] == "audit-0001"
    assert report.actions == ["c2pa.created"]
    # The image alone carries nothing.
    assert verify_image(signed.data, media_type, root_pem).state == "none"


def test_a_sidecar_is_signed_without_sizing_a_placeholder(
    settings: ProvenanceSettings, images: dict[str, bytes], root_pem: str
) -> None:
    # Its hash excludes nothing, so the store's size binds nothing: c2pa-rs never sizes it first.
    manifest_signer = signer_for(settings, "sidecar")
    native = manifest_signer._data_hashed
    assert native is not None
    calls: list[tuple[object, ...]] = []
    placeholder = native._placeholder
    native._placeholder = lambda *args: calls.append(args) or placeholder(*args)
    try:
        signed = manifest_signer.sign(images["image/png"], "image/png", make_info())
    finally:
        manifest_signer.close()
    assert calls == []
    report = verify_image(signed.data, "image/png", root_pem, manifest_store=signed.manifest_store)
    assert report.state == "trusted", report.failures


@pytest.mark.parametrize("media_type", MEDIA_TYPES)
def test_sidecar_reports_invalid_when_the_image_is_altered(
    sidecar_signer: ManifestSigner, images: dict[str, bytes], root_pem: str, media_type: str
) -> None:
    original = images[media_type]
    store = sidecar_signer.sign(original, media_type, make_info()).manifest_store
    assert store is not None
    altered = bytearray(original)
    altered[pixel_offset(original, media_type)] ^= 0x01
    for changed in (bytes(altered), original + b"appended"):
        report = verify_image(changed, media_type, root_pem, manifest_store=store)
        assert report.state == "invalid"
        assert "assertion.dataHash.mismatch" in [f.code for f in report.failures]
    other_image = make_image(next(k for k, v in FORMATS.items() if v == media_type), seed=9)
    assert verify_image(other_image, media_type, root_pem, manifest_store=store).state == "invalid"


def test_sidecar_through_builder_sign_with_ingredients(
    sidecar_signer: ManifestSigner, images: dict[str, bytes], root_pem: str
) -> None:
    inputs = [Ingredient(data=make_image("PNG", 64, seed=1), media_type="image/png", title="photo.png")]
    original = images["image/jpeg"]
    signed = sidecar_signer.sign(original, "image/jpeg", make_info(ingredients=inputs))
    assert signed.data == original and signed.manifest_store is not None
    report = verify_image(original, "image/jpeg", root_pem, manifest_store=signed.manifest_store)
    assert report.state == "trusted", report.failures
    assert report.actions == ["c2pa.opened", "c2pa.edited"]
    assert [(i.title, i.relationship) for i in report.ingredients] == [("photo.png", "parentOf")]


def test_sidecar_without_the_data_hashed_path(
    settings: ProvenanceSettings, images: dict[str, bytes], root_pem: str
) -> None:
    builder_only = signer_for(settings, "sidecar", data_hashed=False)
    try:
        signed = builder_only.sign(images["image/webp"], "image/webp", make_info())
    finally:
        builder_only.close()
    assert signed.data == images["image/webp"] and signed.manifest_store is not None
    report = verify_image(signed.data, "image/webp", root_pem, manifest_store=signed.manifest_store)
    assert report.state == "trusted", report.failures


def test_sidecar_of_an_image_with_an_upstream_manifest(
    sidecar_signer: ManifestSigner, fixtures_dir: Path, root_pem: str
) -> None:
    original = (fixtures_dir / "amazon-titan-g1.png").read_bytes()
    signed = sidecar_signer.sign(original, "image/png", make_info())
    assert signed.upstream_manifest and signed.data == original  # Amazon's manifest stays in place
    assert signed.manifest_store is not None
    report = verify_image(original, "image/png", root_pem, manifest_store=signed.manifest_store)
    assert report.state == "trusted", report.failures
    assert [(i.relationship, i.has_manifest) for i in report.ingredients] == [("parentOf", True)]
    assert any("also embeds" in note for note in report.notes)


def test_without_the_data_hashed_path_an_upstream_store_moves_into_the_sidecar(
    settings: ProvenanceSettings, fixtures_dir: Path, root_pem: str
) -> None:
    original = (fixtures_dir / "amazon-titan-g1.png").read_bytes()
    builder_only = signer_for(settings, "sidecar", data_hashed=False)
    try:
        signed = builder_only.sign(original, "image/png", make_info())
    finally:
        builder_only.close()
    # c2pa-rs's no-embed signing takes the embedded store out; it lives on inside the sidecar.
    assert signed.data != original and b"caBX" not in signed.data and signed.manifest_store
    report = verify_image(signed.data, "image/png", root_pem, manifest_store=signed.manifest_store)
    assert report.state == "trusted", report.failures
    assert [(i.relationship, i.has_manifest) for i in report.ingredients] == [("parentOf", True)]


@pytest.mark.parametrize("media_type", MEDIA_TYPES)
def test_both_embeds_and_returns_the_same_store(
    both_signer: ManifestSigner, images: dict[str, bytes], root_pem: str, media_type: str
) -> None:
    signed = both_signer.sign(images[media_type], media_type, make_info())
    assert signed.embedded and signed.bytes_added > 0
    assert signed.manifest_store is not None and signed.manifest_store in signed.data
    assert verify_image(signed.data, media_type, root_pem).state == "trusted"
    with_sidecar = verify_image(signed.data, media_type, root_pem, manifest_store=signed.manifest_store)
    assert with_sidecar.state == "trusted" and with_sidecar.manifest_source == "sidecar"


def test_a_sidecar_that_is_not_a_manifest_store_is_refused(images: dict[str, bytes]) -> None:
    with pytest.raises(VerificationError, match="not a C2PA manifest store"):
        verify_image(images["image/png"], "image/png", manifest_store=b"not a manifest store at all")
    with pytest.raises(VerificationError):
        verify_image(images["image/png"], "image/png", manifest_store=images["image/png"])


def test_embedded_reports_say_where_the_manifest_came_from(
    signer: ManifestSigner, images: dict[str, bytes], root_pem: str
) -> None:
    signed = signer.sign(images["image/png"], "image/png", make_info())
    assert verify_image(signed.data, "image/png", root_pem).manifest_source == "embedded"
    assert verify_image(images["image/png"], "image/png").manifest_source is None
