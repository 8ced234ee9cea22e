"""Where a C2PA manifest store goes inside a PNG, JPEG or WebP, and which bytes its hash covers.

imagegate's fast signing path (`provenance.native`) places the manifest store itself instead of
handing the whole image to c2pa-rs. It places it exactly where c2pa-rs's own embedding does, in
the container the C2PA specification names for each format, so every C2PA reader finds it:

| format | container                                           | placed                             |
|--------|-----------------------------------------------------|------------------------------------|
| PNG    | one `caBX` chunk                                    | right after `IHDR`                 |
| JPEG   | APP11 JPEG XT segments (`JP`, box 0x0211, 64000 B)  | after the last APP0, else after SOI|
| WebP   | one `C2PA` RIFF chunk (RIFF size updated)           | at the end of the RIFF             |

The hard binding is a `c2pa.hash.data` assertion: SHA-256 over the signed file with the manifest's
container excluded (`exclusion`). For PNG and JPEG that is the SHA-256 of the input bytes (the
container is only inserted); for WebP the new RIFF size and the pad byte of an odd-sized chunk
are covered too, as c2pa-rs does.

`find_slot` returns None for anything it does not recognise as a plain, well-formed file without
C2PA (an upstream manifest, a JPEG with any APP11 segment, a WebP with bytes after its RIFF, ...):
the caller then lets c2pa-rs embed. This module must never import `c2pa`, decode pixels, or
change a byte of the image other than inserting the container (and, for WebP, the RIFF size).
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from dataclasses import dataclass

from provenance.media import JPEG, PNG, WEBP

#: The media type c2pa-rs uses for a bare manifest store (what a `.c2pa` sidecar holds).
MANIFEST_STORE_MEDIA_TYPE = "application/c2pa"
#: The file extension of a manifest store kept beside its asset (a sidecar): `photo.png.c2pa`.
SIDECAR_SUFFIX = ".c2pa"

#: Bytes of manifest store per JPEG APP11 segment (c2pa-rs's `MAX_JPEG_MARKER_SIZE`).
JPEG_SEGMENT_PAYLOAD = 64000
_JPEG_XT_HEADER = b"JP\x02\x11"  # common identifier "JP", box instance number 0x0211
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True, slots=True)
class ManifestSlot:
    """Where the manifest store's container goes in one particular image."""

    media_type: str
    offset: int  # insertion point in the input bytes

    def container(self, store: bytes) -> bytes:
        """The manifest store wrapped in this format's container (what gets inserted)."""
        return wrap_manifest_store(store, self.media_type)

    def container_size(self, store_size: int) -> int:
        if self.media_type == PNG:
            return 12 + store_size
        if self.media_type == JPEG:
            segments = max(1, -(-store_size // JPEG_SEGMENT_PAYLOAD))
            return store_size + 12 * segments + 8 * (segments - 1)
        return 8 + store_size + (store_size & 1)  # WebP: header, payload, pad byte

    def exclusion(self, store_size: int) -> tuple[int, int]:
        """(start, length) of the bytes the data hash leaves out: the container, in the output."""
        if self.media_type == WEBP:
            return self.offset, 8 + store_size  # c2pa-rs excludes the chunk but not its pad byte
        return self.offset, self.container_size(store_size)

    def content_digest(self, image: bytes, store_size: int) -> bytes:
        """SHA-256 of the signed file minus `exclusion`: computed before the store exists."""
        if self.media_type != WEBP:
            return hashlib.sha256(image).digest()
        digest = hashlib.sha256(self._riff_header(image, store_size))
        digest.update(memoryview(image)[8:])
        if store_size & 1:
            digest.update(b"\x00")  # the pad byte after the chunk is hashed
        return digest.digest()

    def embed(self, image: bytes, store: bytes) -> bytes:
        """The signed file: `image` with the store's container inserted (one copy of the bytes)."""
        view = memoryview(image)
        container = self.container(store)
        if self.media_type == WEBP:
            return b"".join((self._riff_header(image, len(store)), view[8:], container))
        return b"".join((view[: self.offset], container, view[self.offset :]))

    def _riff_header(self, image: bytes, store_size: int) -> bytes:
        riff_size = len(image) - 8 + self.container_size(store_size)
        return b"RIFF" + struct.pack("<I", riff_size)


def find_slot(image: bytes, media_type: str) -> ManifestSlot | None:
    """Where a manifest store goes in `image`, or None when c2pa-rs should embed it instead."""
    try:
        if media_type == PNG:
            return _png_slot(image)
        if media_type == JPEG:
            return _jpeg_slot(image)
        if media_type == WEBP:
            return _webp_slot(image)
    except (IndexError, ValueError, struct.error):
        return None
    return None


def wrap_manifest_store(store: bytes, media_type: str) -> bytes:
    """A manifest store (JUMBF) in the container of `media_type` (PNG, JPEG or WebP)."""
    if media_type == PNG:
        crc = zlib.crc32(store, zlib.crc32(b"caBX")) & 0xFFFFFFFF
        return b"".join((struct.pack(">I", len(store)), b"caBX", store, struct.pack(">I", crc)))
    if media_type == JPEG:
        return _jpeg_segments(store)
    if media_type == WEBP:
        pad = b"\x00" if len(store) & 1 else b""
        return b"".join((b"C2PA", struct.pack("<I", len(store)), store, pad))
    raise ValueError(f"no manifest container for {media_type}")


def looks_like_manifest_store(data: bytes) -> bool:
    """Whether `data` starts like a C2PA manifest store: a JUMBF superbox labelled `c2pa`."""
    return len(data) >= 32 and data[4:8] == b"jumb" and b"c2pa" in data[8:48]


def _jpeg_segments(store: bytes) -> bytes:
    # ISO 19566-5 (JPEG XT) boxes, as c2pa-rs writes them: every segment repeats the header, and
    # each segment after the first repeats the box's LBox and TBox before its part of the payload.
    parts = []
    pieces = [store[i : i + JPEG_SEGMENT_PAYLOAD] for i in range(0, len(store), JPEG_SEGMENT_PAYLOAD)]
    for number, piece in enumerate(pieces or [b""], start=1):
        payload = _JPEG_XT_HEADER + struct.pack(">I", number)
        if number > 1:
            payload += store[:8]
        payload += piece
        parts.append(b"\xff\xeb" + struct.pack(">H", len(payload) + 2) + payload)
    return b"".join(parts)


def _png_slot(image: bytes) -> ManifestSlot | None:
    if not image.startswith(_PNG_SIGNATURE) or image[12:16] != b"IHDR":
        return None
    if int.from_bytes(image[8:12], "big") != 13:
        return None
    position = 8
    while position + 12 <= len(image):  # chunk headers only: a few microseconds for 2 MB
        length = int.from_bytes(image[position : position + 4], "big")
        kind = image[position + 4 : position + 8]
        if kind == b"caBX":
            return None
        position += 12 + length
        if kind == b"IEND":
            return ManifestSlot(PNG, 8 + 12 + 13) if position == len(image) else None
    return None  # truncated, or no IEND


def _jpeg_slot(image: bytes) -> ManifestSlot | None:
    if not image.startswith(b"\xff\xd8"):
        return None
    position = 2
    after_app0 = None
    while True:
        if position + 4 > len(image) or image[position] != 0xFF:
            return None  # fill bytes, truncation or garbage: let c2pa-rs deal with it
        marker = image[position + 1]
        if marker == 0xDA:  # start of scan: the metadata segments are all behind us
            return ManifestSlot(JPEG, after_app0 if after_app0 is not None else 2)
        if marker in (0xD8, 0xD9, 0x01, 0xFF) or 0xD0 <= marker <= 0xD7 or marker == 0xEB:
            return None  # stand-alone markers before the scan, or an APP11 (JUMBF) of any kind
        length = int.from_bytes(image[position + 2 : position + 4], "big")
        if length < 2:
            return None
        position += 2 + length
        if marker == 0xE0:
            after_app0 = position


def _webp_slot(image: bytes) -> ManifestSlot | None:
    if len(image) < 20 or image[:4] != b"RIFF" or image[8:12] != b"WEBP":
        return None
    riff_size = int.from_bytes(image[4:8], "little")
    if riff_size + 8 != len(image) or riff_size & 1:
        return None  # bytes beyond the RIFF, or a truncated one
    position = 12
    while position < len(image):
        if position + 8 > len(image):
            return None
        kind = image[position : position + 4]
        size = int.from_bytes(image[position + 4 : position + 8], "little")
        if kind == b"C2PA":
            return None
        position += 8 + size + (size & 1)
    if position != len(image):
        return None
    return ManifestSlot(WEBP, len(image))
