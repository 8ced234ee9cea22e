"""Signing PNG, JPEG and WebP, reading them back, and detecting tampering."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from provenance import (
    IMAGEGATE_ASSERTION_LABEL,
    TRAINED_ALGORITHMIC_MEDIA,
    Ingredient,
    ManifestSigner,
    ProvenanceSettings,
    SigningError,
    TimestampAuthorityError,
    VerificationError,
    ensure_dev_credentials,
    load_signing_credentials,
    verify_image,
)
from provenance.dev_credentials import DevCredentials
from provenance.keys import SigningCredentials
from provenance.signer import local_key_callback
from tests.provenance.conftest import FORMATS, make_image, make_info

MEDIA_TYPES = list(FORMATS.values())


def pixel_offset(data: bytes, media_type: str) -> int:
    """An offset inside the compressed pixel data (not in headers, not in the manifest)."""
    if media_type == "image/png":
        start = data.index(b"IDAT") + 4
    elif media_type == "image/jpeg":
        # Walk the segments: searching for the SOS marker could hit its two bytes inside the
        # manifest store (hashes and signature are random bytes), about once in 300 signatures.
        sos = 2
        while data[sos + 1] != 0xDA:
            sos += 2 + int.from_bytes(data[sos + 2 : sos + 4], "big")
        start = sos + 2 + int.from_bytes(data[sos + 2 : sos + 4], "big")
    else:
        start = data.index(b"VP8") + 8
    return start + 100


@pytest.mark.parametrize("media_type", MEDIA_TYPES)
def test_every_format_signs_and_reads_back_trusted(
    signer: ManifestSigner, images: dict[str, bytes], root_pem: str, media_type: str
) -> None:
    original = images[media_type]
    signed = signer.sign(original, media_type, make_info())

    assert signed.media_type == media_type
    assert signed.manifest_id.startswith("urn:c2pa:")
    assert signed.bytes_added == len(signed.data) - len(original)
    assert 0 < signed.bytes_added < 8 * 1024
    assert not signed.upstream_manifest

    report = verify_image(signed.data, media_type, trust_anchors_pem=root_pem)
    assert report.state == "trusted", report.failures
    assert report.has_credentials and report.failures == []
    assert report.active_manifest == signed.manifest_id
    assert report.digital_source_type == TRAINED_ALGORITHMIC_MEDIA
    assert report.actions == ["c2pa.created"]
    assert report.software_agent == "gpt-image-1 (openai)"
    assert report.generator == "imagegate 0.1.0"
    assert report.signer is not None
    assert report.signer.common_name == "imagegate DEVELOPMENT signing certificate"
    assert report.signer.algorithm == "Es256"
    assert report.imagegate is not None
    assert report.imagegate["audit_id"] == "audit-0001"
    assert report.imagegate["policy_version"] == "sha256:0f1e2d3c4b5a69788796a5b4c3d2e1f0"
    assert report.imagegate["licence"]["decision"] == "allowed"
    assert report.imagegate["verdicts"][1]["category"] == "nsfw"
    assert report.ingredients == []


def test_media_type_is_sniffed_when_missing_or_wrong(
    signer: ManifestSigner, images: dict[str, bytes], root_pem: str
) -> None:
    jpeg = images["image/jpeg"]
    signed = signer.sign(jpeg, "image/png", make_info())  # provider mislabelled its JPEG
    assert signed.media_type == "image/jpeg"
    report = verify_image(signed.data, trust_anchors_pem=root_pem)
    assert report.media_type == "image/jpeg" and report.state == "trusted"


def test_without_trust_anchors_a_good_signature_is_valid_not_trusted(
    signer: ManifestSigner, images: dict[str, bytes]
) -> None:
    signed = signer.sign(images["image/png"], "image/png", make_info())
    report = verify_image(signed.data)
    assert report.state == "valid"
    assert [f.code for f in report.failures] == ["signingCredential.untrusted"]
    assert "trusted root" in report.failures[0].message


@pytest.mark.parametrize("media_type", MEDIA_TYPES)
def test_flipped_pixel_byte_is_invalid(
    signer: ManifestSigner, images: dict[str, bytes], root_pem: str, media_type: str
) -> None:
    signed = signer.sign(images[media_type], media_type, make_info()).data
    tampered = bytearray(signed)
    tampered[pixel_offset(signed, media_type)] ^= 0x01
    report = verify_image(bytes(tampered), media_type, trust_anchors_pem=root_pem)
    assert report.state == "invalid"
    codes = [f.code for f in report.failures]
    assert "assertion.dataHash.mismatch" in codes
    message = report.failures[codes.index("assertion.dataHash.mismatch")].message
    assert "changed after signing" in message


@pytest.mark.parametrize("media_type", MEDIA_TYPES)
def test_edited_assertion_is_invalid(
    signer: ManifestSigner, images: dict[str, bytes], root_pem: str, media_type: str
) -> None:
    signed = signer.sign(images[media_type], media_type, make_info(audit_id="audit-ORIGINAL"))
    tampered = signed.data.replace(b"audit-ORIGINAL", b"audit-FORGED!!")
    assert tampered != signed.data and len(tampered) == len(signed.data)
    report = verify_image(tampered, media_type, trust_anchors_pem=root_pem)
    assert report.state == "invalid"
    failure = next(f for f in report.failures if f.code == "assertion.hashedURI.mismatch")
    assert IMAGEGATE_ASSERTION_LABEL in (failure.url or "")
    assert "edited after signing" in failure.message


@pytest.mark.parametrize("media_type", MEDIA_TYPES)
def test_appended_bytes_are_invalid(
    signer: ManifestSigner, images: dict[str, bytes], root_pem: str, media_type: str
) -> None:
    # c2pa-rs's data hash covers the whole file except the manifest itself, so bytes after
    # PNG IEND, JPEG EOI or past the WebP RIFF size are caught as a data hash mismatch.
    signed = signer.sign(images[media_type], media_type, make_info()).data
    report = verify_image(signed + b"appended after signing", media_type, root_pem)
    assert report.state == "invalid"
    assert "assertion.dataHash.mismatch" in [f.code for f in report.failures]
    assert any("22 bytes follow the end" in note for note in report.notes)
    assert verify_image(signed, media_type, root_pem).notes == []


def test_image_without_credentials_reports_none(images: dict[str, bytes]) -> None:
    for media_type, data in images.items():
        report = verify_image(data, media_type)
        assert report.state == "none" and not report.has_credentials
        assert report.to_dict()["state"] == "none"


def test_not_an_image_raises_verification_error() -> None:
    with pytest.raises(VerificationError):
        verify_image(b"hello, not an image")
    with pytest.raises(VerificationError):
        verify_image(b"hello, not an image", "image/png")


def test_unsupported_format_is_refused_for_signing(signer: ManifestSigner) -> None:
    with pytest.raises(SigningError, match="cannot sign"):
        signer.sign(b"GIF89a" + b"\x00" * 32, "image/gif", make_info())


def test_edit_inputs_become_ingredients(
    signer: ManifestSigner, images: dict[str, bytes], root_pem: str
) -> None:
    inputs = [
        Ingredient(data=make_image("PNG", 64, seed=1), media_type="image/png", title="photo.png"),
        Ingredient(data=make_image("JPEG", 64, seed=2), media_type="image/jpeg", title="mask.jpg"),
    ]
    signed = signer.sign(images["image/png"], "image/png", make_info(ingredients=inputs))
    report = verify_image(signed.data, trust_anchors_pem=root_pem)
    assert report.state == "trusted", report.failures
    assert report.actions == ["c2pa.opened", "c2pa.edited"]
    assert report.digital_source_type == TRAINED_ALGORITHMIC_MEDIA
    relations = [(i.title, i.relationship, i.has_manifest) for i in report.ingredients]
    assert relations == [("photo.png", "parentOf", False), ("mask.jpg", "inputTo", False)]


def test_one_signer_is_shared_safely_across_threads(
    signer: ManifestSigner, images: dict[str, bytes], root_pem: str
) -> None:
    jobs = [(media_type, index) for index in range(6) for media_type in MEDIA_TYPES]
    barrier = threading.Barrier(len(MEDIA_TYPES))  # the index-0 jobs start together

    def sign(job: tuple[str, int]) -> tuple[str, bytes, str]:
        media_type, index = job
        if index == 0:
            barrier.wait(timeout=10)  # make the first calls overlap for sure
        result = signer.sign(images[media_type], media_type, make_info(audit_id=f"a-{index}"))
        return media_type, result.data, result.manifest_id

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(sign, jobs))
    assert len({manifest_id for _, _, manifest_id in results}) == len(jobs)
    for media_type, data, manifest_id in results:
        report = verify_image(data, media_type, root_pem)
        assert report.state == "trusted" and report.active_manifest == manifest_id


def test_callback_signer_for_kms_or_hsm(
    settings: ProvenanceSettings, images: dict[str, bytes], root_pem: str
) -> None:
    local = load_signing_credentials(settings)
    assert local.private_key_pem is not None
    calls: list[int] = []
    sign_locally = local_key_callback(local.private_key_pem.get_secret_value(), "es256")

    def kms(data: bytes) -> bytes:
        calls.append(len(data))
        return sign_locally(data)

    no_key = ProvenanceSettings(cert_chain_file=settings.cert_chain_file)
    credentials = load_signing_credentials(no_key, signing_callback=kms)
    assert isinstance(credentials, SigningCredentials) and credentials.private_key_pem is None
    callback_signer = ManifestSigner(credentials, no_key)
    try:
        signed = callback_signer.sign(images["image/webp"], "image/webp", make_info())
    finally:
        callback_signer.close()
    assert calls, "the callback was never asked to sign"
    assert verify_image(signed.data, "image/webp", root_pem).state == "trusted"


def test_unreachable_timestamp_authority_fails_clearly(
    settings: ProvenanceSettings, images: dict[str, bytes]
) -> None:
    with_tsa = settings.model_copy(update={"tsa_url": "http://127.0.0.1:9/tsa"})
    tsa_signer = ManifestSigner(load_signing_credentials(with_tsa), with_tsa)
    try:
        with pytest.raises(TimestampAuthorityError, match="127.0.0.1:9"):
            tsa_signer.sign(images["image/png"], "image/png", make_info())
        with pytest.raises(TimestampAuthorityError):
            tsa_signer.self_test()  # what start-up calls to fail early
    finally:
        tsa_signer.close()


def test_timestamp_fallback_signs_without_timestamp(
    settings: ProvenanceSettings, images: dict[str, bytes], root_pem: str
) -> None:
    fallback = settings.model_copy(
        update={"tsa_url": "http://127.0.0.1:9/tsa", "tsa_fallback": "sign_without_timestamp"}
    )
    tsa_signer = ManifestSigner(load_signing_credentials(fallback), fallback)
    try:
        signed = tsa_signer.sign(images["image/jpeg"], "image/jpeg", make_info())
    finally:
        tsa_signer.close()
    assert not signed.timestamped
    assert verify_image(signed.data, "image/jpeg", root_pem).state == "trusted"


def test_thumbnail_and_verify_after_sign_are_configurable(
    settings: ProvenanceSettings, images: dict[str, bytes], root_pem: str
) -> None:
    slow = settings.model_copy(update={"embed_thumbnail": True, "verify_after_sign": True})
    slow_signer = ManifestSigner(load_signing_credentials(slow), slow)
    try:
        signed = slow_signer.sign(images["image/png"], "image/png", make_info())
    finally:
        slow_signer.close()
    assert verify_image(signed.data, "image/png", root_pem).state == "trusted"
    assert b"c2pa.thumbnail.claim" in signed.data


@pytest.mark.parametrize(
    "verdict", [{"score": float("nan")}, {"categories": {"nsfw", "gore"}}, {"raw": b"\x00"}]
)
def test_unserialisable_verdicts_are_a_clear_signing_error(
    signer: ManifestSigner, images: dict[str, bytes], verdict: dict[str, object]
) -> None:
    with pytest.raises(SigningError, match="moderation data cannot go into a manifest"):
        signer.sign(images["image/png"], "image/png", make_info(verdicts=[verdict]))


@pytest.fixture(scope="module")
def ed25519_dev(tmp_path_factory: pytest.TempPathFactory) -> DevCredentials:
    return ensure_dev_credentials(tmp_path_factory.mktemp("dev-keys-ed25519"), "ed25519")


@pytest.mark.parametrize("media_type", MEDIA_TYPES)
def test_ed25519_signatures_read_back_trusted_and_catch_tampering(
    ed25519_dev: DevCredentials, images: dict[str, bytes], media_type: str
) -> None:
    """Ed25519 (the faster algorithm in c2pa-rs) on the same path: trusted, and tampering found."""
    settings = ProvenanceSettings(  # no algorithm named: the certificate's key says ed25519
        cert_chain_file=ed25519_dev.cert_chain_file, private_key_file=ed25519_dev.private_key_file
    )
    credentials = load_signing_credentials(settings)
    assert credentials.algorithm == "ed25519"
    signer = ManifestSigner(credentials, settings)
    try:
        assert signer.data_hashed_available
        signed = signer.sign(images[media_type], media_type, make_info(audit_id="audit-ORIGINAL"))
    finally:
        signer.close()
    root_pem = ed25519_dev.root_ca_file.read_text()
    assert 0 < signed.bytes_added < 8 * 1024

    report = verify_image(signed.data, media_type, trust_anchors_pem=root_pem)
    assert report.state == "trusted", report.failures
    assert report.signer is not None and report.signer.algorithm == "Ed25519"
    assert report.imagegate is not None and report.imagegate["audit_id"] == "audit-ORIGINAL"

    flipped = bytearray(signed.data)
    flipped[pixel_offset(signed.data, media_type)] ^= 0x01
    report = verify_image(bytes(flipped), media_type, trust_anchors_pem=root_pem)
    assert report.state == "invalid"
    assert "assertion.dataHash.mismatch" in [f.code for f in report.failures]

    edited = signed.data.replace(b"audit-ORIGINAL", b"audit-FORGED!!")
    assert edited != signed.data
    report = verify_image(edited, media_type, trust_anchors_pem=root_pem)
    assert report.state == "invalid" and report.failures
