"""Media type sniffing and the trailing-bytes diagnosis."""

from __future__ import annotations

import pytest

from provenance import ManifestSigner
from provenance.media import (
    has_c2pa_segment,
    normalise_media_type,
    sniff_media_type,
    trailing_bytes,
)
from provenance.sign import tiny_png
from tests.provenance.conftest import FORMATS, make_image, make_info


@pytest.mark.parametrize(("fmt", "media_type"), sorted(FORMATS.items()))
def test_sniff_and_trailing_bytes(fmt: str, media_type: str) -> None:
    data = make_image(fmt, 32)
    assert sniff_media_type(data) == media_type
    assert trailing_bytes(data, media_type) == 0
    assert trailing_bytes(data + b"12345", media_type) == 5


def test_aliases_and_unknown() -> None:
    assert normalise_media_type("image/JPG; q=1") == "image/jpeg"
    assert normalise_media_type(None) is None
    assert sniff_media_type(b"nope") is None
    assert sniff_media_type(tiny_png()) == "image/png"


@pytest.mark.parametrize(("fmt", "media_type"), sorted(FORMATS.items()))
def test_c2pa_container_found_by_header_walk(
    signer: ManifestSigner, fmt: str, media_type: str
) -> None:
    plain = make_image(fmt, 32)
    assert not has_c2pa_segment(plain, media_type)
    signed = signer.sign(plain, media_type, make_info()).data
    assert has_c2pa_segment(signed, media_type)
