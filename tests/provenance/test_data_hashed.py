"""The data-hashed signing path: same manifest as `Builder.sign`, container where c2pa-rs puts it."""

from __future__ import annotations

import io
import json
import os
import struct
import warnings
from collections.abc import Iterator

import c2pa
import pytest

from provenance import (
    Ingredient,
    ManifestSigner,
    ProvenanceSettings,
    load_signing_credentials,
    verify_image,
)
from provenance.containers import (
    JPEG_SEGMENT_PAYLOAD,
    ManifestSlot,
    find_slot,
    looks_like_manifest_store,
    wrap_manifest_store,
)
from provenance.native import DataHashedSigning
from tests.provenance.conftest import FORMATS, make_image, make_info
from tests.provenance.test_sign_verify import pixel_offset

MEDIA_TYPES = list(FORMATS.values())


@pytest.fixture(scope="module")
def builder_signer(settings: ProvenanceSettings) -> Iterator[ManifestSigner]:
    """The same credentials, every image through c2pa-python's `Builder.sign`."""
    manifest_signer = ManifestSigner(load_signing_credentials(settings), settings, data_hashed=False)
    yield manifest_signer
    manifest_signer.close()


def active_manifest(data: bytes, media_type: str, *, detailed: bool = False) -> dict:
    """The active manifest as c2pa-rs reports it (`detailed`: with the assertion store)."""
    with c2pa.Reader(media_type, io.BytesIO(data)) as reader:
        store = json.loads(reader.detailed_json() if detailed else reader.json())
    return dict(store["manifests"][store["active_manifest"]])


def data_hash_exclusions(data: bytes, media_type: str) -> list[dict[str, int]]:
    binding = active_manifest(data, media_type, detailed=True)["assertion_store"]["c2pa.hash.data"]
    return list(binding["exclusions"])


def stable_view(data: bytes, media_type: str) -> dict:
    """What a reader sees in the active manifest, less what is unique per signature."""
    manifest = active_manifest(data, media_type)
    for key in ("label", "instance_id", "signature_info"):
        manifest.pop(key, None)
    return dict(manifest)


def test_the_installed_c2pa_provides_the_data_hashed_path(signer: ManifestSigner) -> None:
    # If this fails after a c2pa-python upgrade, signing still works (through Builder.sign), only
    # slower: provenance.native must be checked against the new release.
    assert DataHashedSigning.load() is not None
    assert signer.data_hashed_available


@pytest.mark.parametrize("media_type", MEDIA_TYPES)
def test_manifest_is_the_one_builder_sign_writes(
    signer: ManifestSigner,
    builder_signer: ManifestSigner,
    images: dict[str, bytes],
    root_pem: str,
    media_type: str,
) -> None:
    original = images[media_type]
    info = make_info()  # one creation time for both, or a second boundary between them differs
    fast = signer.sign(original, media_type, info)
    reference = builder_signer.sign(original, media_type, info)
    assert verify_image(fast.data, media_type, root_pem).state == "trusted"
    assert verify_image(reference.data, media_type, root_pem).state == "trusted"
    assert stable_view(fast.data, media_type) == stable_view(reference.data, media_type)

    fast_claim = active_manifest(fast.data, media_type, detailed=True)
    reference_claim = active_manifest(reference.data, media_type, detailed=True)
    assert set(fast_claim["assertion_store"]) == set(reference_claim["assertion_store"])
    assert fast_claim["claim"]["alg"] == reference_claim["claim"]["alg"] == "sha256"
    # The hard binding: one exclusion, starting where c2pa-rs puts its container.
    [fast_exclusion] = data_hash_exclusions(fast.data, media_type)
    [reference_exclusion] = data_hash_exclusions(reference.data, media_type)
    assert fast_exclusion["start"] == reference_exclusion["start"]
    # The reserved hard binding (one exclusion of any size, a digest) costs a few bytes more than
    # the exact one Builder.sign writes; c2pa-rs's placeholder reserved ten exclusions (~100 B).
    assert 0 <= fast.bytes_added - reference.bytes_added <= 32
    assert fast.bytes_added < 8 * 1024


def test_edit_inputs_are_the_same_ingredients_on_both_paths(
    signer: ManifestSigner, builder_signer: ManifestSigner, images: dict[str, bytes], root_pem: str
) -> None:
    inputs = [
        Ingredient(data=make_image("PNG", 64, seed=1), media_type="image/png", title="photo.png"),
        Ingredient(data=make_image("JPEG", 64, seed=2), media_type="image/jpeg", title="mask.jpg"),
    ]
    original = images["image/webp"]
    info = make_info(ingredients=inputs)  # one creation time for both signatures
    fast = signer.sign(original, "image/webp", info).data
    reference = builder_signer.sign(original, "image/webp", info).data
    assert verify_image(fast, "image/webp", root_pem).state == "trusted"
    fast_view, reference_view = stable_view(fast, "image/webp"), stable_view(reference, "image/webp")
    for view in (fast_view, reference_view):
        # Unique per signature: each ingredient's instance id, hence its assertion's hash.
        for ingredient in view["ingredients"]:
            ingredient.pop("instance_id", None)
        for assertion in view["assertions"]:
            for action in assertion["data"].get("actions", []):
                for link in action.get("parameters", {}).get("ingredients", []):
                    link.pop("hash", None)
    assert fast_view == reference_view
    [exclusion] = data_hash_exclusions(fast, "image/webp")
    assert exclusion["start"] == len(original)  # signed on the data-hashed path


class CountingPlaceholder:
    """The real native placeholder call, counted (how often c2pa-rs sized a store)."""

    def __init__(self, native: DataHashedSigning) -> None:
        self.calls = 0
        self._call = native._placeholder

    def __call__(self, *args: object) -> int:
        self.calls += 1
        return self._call(*args)


@pytest.fixture()
def fresh_signer(settings: ProvenanceSettings) -> Iterator[ManifestSigner]:
    """A signer that has learned no store size yet."""
    manifest_signer = ManifestSigner(load_signing_credentials(settings), settings)
    yield manifest_signer
    manifest_signer.close()


@pytest.mark.parametrize("media_type", MEDIA_TYPES)
def test_a_definition_of_a_known_length_is_signed_without_sizing_a_placeholder(
    fresh_signer: ManifestSigner, images: dict[str, bytes], root_pem: str, media_type: str
) -> None:
    native = fresh_signer._data_hashed
    assert native is not None
    counter = native._placeholder = CountingPlaceholder(native)
    first = fresh_signer.sign(images[media_type], media_type, make_info(audit_id="01J" + "A" * 23))
    second = fresh_signer.sign(images[media_type], media_type, make_info(audit_id="01J" + "B" * 23))
    assert counter.calls == 1  # the second definition has the first one's length: size known
    for signed in (first, second):
        assert verify_image(signed.data, media_type, root_pem).state == "trusted"
        [exclusion] = data_hash_exclusions(signed.data, media_type)
        assert exclusion["start"] + exclusion["length"] <= len(signed.data)
    assert first.bytes_added == second.bytes_added


@pytest.mark.parametrize("wrong_by", [-7, 1, 5000])
def test_a_wrongly_learned_size_costs_a_second_signature_never_a_wrong_binding(
    fresh_signer: ManifestSigner, images: dict[str, bytes], root_pem: str, wrong_by: int
) -> None:
    native = fresh_signer._data_hashed
    assert native is not None
    media_type = "image/jpeg"
    original = images[media_type]
    learned = fresh_signer.sign(original, media_type, make_info())
    right = dict(native._store_sizes)
    assert len(right) == 1
    # As if another definition of the same JSON length had encoded to a different CBOR size.
    for key in native._store_sizes:
        native._store_sizes[key] += wrong_by
    counter = native._placeholder = CountingPlaceholder(native)
    signed = fresh_signer.sign(original, media_type, make_info())
    assert counter.calls == 0
    assert verify_image(signed.data, media_type, root_pem).state == "trusted"
    assert signed.bytes_added == learned.bytes_added
    [exclusion] = data_hash_exclusions(signed.data, media_type)
    assert exclusion["length"] == len(signed.data) - len(original)
    # and the size it really has is what is learned now
    again = fresh_signer.sign(original, media_type, make_info())
    assert verify_image(again.data, media_type, root_pem).state == "trusted"
    assert native._store_sizes == right


@pytest.mark.parametrize("media_type", ["image/png", "image/jpeg"])
def test_png_and_jpeg_only_gain_the_container(
    signer: ManifestSigner, images: dict[str, bytes], media_type: str
) -> None:
    original = images[media_type]
    signed = signer.sign(original, media_type, make_info()).data
    [exclusion] = data_hash_exclusions(signed, media_type)
    start, length = exclusion["start"], exclusion["length"]
    assert length == len(signed) - len(original)
    assert signed[:start] + signed[start + length :] == original


def test_webp_gains_a_chunk_at_the_end_and_a_new_riff_size(
    signer: ManifestSigner, images: dict[str, bytes]
) -> None:
    original = images["image/webp"]
    signed = signer.sign(original, "image/webp", make_info()).data
    [exclusion] = data_hash_exclusions(signed, "image/webp")
    assert exclusion["start"] == len(original)
    assert signed[exclusion["start"] : exclusion["start"] + 4] == b"C2PA"
    assert signed[8 : len(original)] == original[8:]
    assert int.from_bytes(signed[4:8], "little") == len(signed) - 8


def test_webp_store_of_odd_and_even_size(signer: ManifestSigner, root_pem: str) -> None:
    # c2pa-rs excludes the C2PA chunk but hashes its pad byte; both parities must verify.
    original = make_image("WEBP", 96, seed=3)
    parities: set[int] = set()
    for width in range(1, 12):
        signed = signer.sign(original, "image/webp", make_info(audit_id="a" * width)).data
        chunk_size = int.from_bytes(signed[len(original) + 4 : len(original) + 8], "little")
        parities.add(chunk_size & 1)
        assert verify_image(signed, "image/webp", root_pem).state == "trusted"
        tampered = bytearray(signed)
        tampered[pixel_offset(signed, "image/webp")] ^= 0x01
        assert verify_image(bytes(tampered), "image/webp", root_pem).state == "invalid"
        if parities == {0, 1}:
            break
    assert parities == {0, 1}


def test_a_manifest_over_64_kb_spans_several_jpeg_segments(
    signer: ManifestSigner, images: dict[str, bytes], root_pem: str
) -> None:
    verdicts = [{"stage": "output_classifier", "note": "x" * 1000, "index": i} for i in range(80)]
    signed = signer.sign(images["image/jpeg"], "image/jpeg", make_info(verdicts=verdicts))
    assert signed.bytes_added > JPEG_SEGMENT_PAYLOAD
    assert signed.data.count(b"\xff\xeb") >= 2
    report = verify_image(signed.data, "image/jpeg", root_pem)
    assert report.state == "trusted", report.failures
    assert report.imagegate is not None and len(report.imagegate["verdicts"]) == 80


@pytest.mark.parametrize("size", [3580, JPEG_SEGMENT_PAYLOAD, JPEG_SEGMENT_PAYLOAD + 1, 150001])
@pytest.mark.parametrize("media_type", ["image/png", "image/jpeg"])
def test_containers_match_c2pa_rs_byte_for_byte(size: int, media_type: str) -> None:
    format_embeddable = getattr(getattr(c2pa, "c2pa", None), "format_embeddable", None)
    if format_embeddable is None:
        pytest.skip("this c2pa-python no longer has format_embeddable")
    store = struct.pack(">I", size) + b"jumb" + os.urandom(size - 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        _, reference = format_embeddable(media_type, store)
    assert wrap_manifest_store(store, media_type) == reference
    slot = ManifestSlot(media_type, 0)
    assert slot.container_size(size) == len(reference)


def test_find_slot_offsets() -> None:
    png = make_image("PNG", 32)
    assert find_slot(png, "image/png") == ManifestSlot("image/png", 33)  # after IHDR
    jpeg = make_image("JPEG", 32)
    assert jpeg[2:4] == b"\xff\xe0"  # Pillow writes a JFIF APP0
    app0_end = 4 + int.from_bytes(jpeg[4:6], "big")
    assert find_slot(jpeg, "image/jpeg") == ManifestSlot("image/jpeg", app0_end)
    without_app0 = b"\xff\xd8" + jpeg[app0_end:]
    assert find_slot(without_app0, "image/jpeg") == ManifestSlot("image/jpeg", 2)
    webp = make_image("WEBP", 32)
    assert find_slot(webp, "image/webp") == ManifestSlot("image/webp", len(webp))


def test_files_the_header_walk_does_not_know_go_through_builder_sign(
    signer: ManifestSigner, root_pem: str
) -> None:
    jpeg = make_image("JPEG", 64)
    # An APP11 segment that is not C2PA (some other JPEG XT box): leave the layout to c2pa-rs.
    box = struct.pack(">I", 32) + b"jumb" + struct.pack(">I", 24) + b"jumd" + b"xmpl" + b"\x00" * 12
    payload = b"JP\x00\x01" + struct.pack(">I", 1) + box
    other_box = b"\xff\xeb" + struct.pack(">H", 2 + len(payload)) + payload
    with_app11 = jpeg[:2] + other_box + jpeg[2:]
    assert find_slot(with_app11, "image/jpeg") is None
    signed = signer.sign(with_app11, "image/jpeg", make_info())
    assert verify_image(signed.data, "image/jpeg", root_pem).state == "trusted"

    png = make_image("PNG", 64)
    assert find_slot(png + b"trailing", "image/png") is None  # bytes past IEND
    signed = signer.sign(png + b"trailing", "image/png", make_info())
    assert verify_image(signed.data, "image/png", root_pem).state == "trusted"

    webp = make_image("WEBP", 64)
    assert find_slot(webp + b"trailing", "image/webp") is None  # bytes past the RIFF
    assert find_slot(b"RIFF\x04\x00\x00\x00WEBP", "image/webp") is None
    assert find_slot(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30, "image/png") is None
    assert find_slot(b"\xff\xd8\xff\xe0\x00", "image/jpeg") is None  # truncated


def test_manifest_store_recognition() -> None:
    store = struct.pack(">I", 40) + b"jumb" + struct.pack(">I", 24) + b"jumdc2pa" + b"\x00" * 24
    assert looks_like_manifest_store(store)
    assert not looks_like_manifest_store(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    assert not looks_like_manifest_store(b"")
