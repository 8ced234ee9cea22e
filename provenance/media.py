"""Image media types: which formats provenance signs, and sniffing a type from magic bytes.

The bytes decide, not a label: a provider that says `image/png` for a JPEG gets its image signed
(and verified) as the JPEG it is. This module must never decode an image or import `c2pa`.
"""

from __future__ import annotations

PNG = "image/png"
JPEG = "image/jpeg"
WEBP = "image/webp"

#: The formats imagegate signs: what image-generation APIs return.
SIGNABLE_MEDIA_TYPES: frozenset[str] = frozenset({PNG, JPEG, WEBP})

#: Formats `sniff_media_type` recognises: bytes declared as one of them must carry its magic.
SNIFFABLE_MEDIA_TYPES: frozenset[str] = frozenset(
    {PNG, JPEG, WEBP, "image/gif", "image/tiff", "image/avif", "image/heic"}
)

_ALIASES = {"image/jpg": JPEG, "image/pjpeg": JPEG, "image/x-png": PNG}

#: File extensions of the formats `verify_image` reads (also used to walk folders).
EXTENSIONS: dict[str, str] = {
    ".png": PNG,
    ".jpg": JPEG,
    ".jpeg": JPEG,
    ".webp": WEBP,
    ".avif": "image/avif",
    ".heic": "image/heic",
    ".heif": "image/heif",
    ".gif": "image/gif",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
    ".c2pa": "application/c2pa",
}


def normalise_media_type(media_type: str | None) -> str | None:
    """Lower-case, drop parameters (`; charset=...`) and map aliases (`image/jpg`)."""
    if not media_type:
        return None
    base = media_type.split(";", 1)[0].strip().lower()
    return _ALIASES.get(base, base) or None


def sniff_media_type(data: bytes) -> str | None:
    """The media type the first bytes announce, or None when they are not a known image."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
    if data.startswith(b"\xff\xd8\xff"):
        return JPEG
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return WEBP
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "image/tiff"
    if len(data) >= 12 and data[4:8] == b"ftyp":
        brand = data[8:12]
        if brand in (b"avif", b"avis"):
            return "image/avif"
        if brand in (b"heic", b"heix", b"mif1", b"msf1", b"heim", b"heis"):
            return "image/heic"
    return None


def resolve_media_type(data: bytes, declared: str | None) -> str | None:
    """The sniffed type when the bytes are recognisable, else the declared one (normalised)."""
    return sniff_media_type(data) or normalise_media_type(declared)


def trailing_bytes(data: bytes, media_type: str | None) -> int | None:
    """How many bytes follow the format's own end marker (PNG IEND, JPEG EOI, WebP RIFF size).

    Used to explain a hash mismatch ("bytes were appended after the image"); None when the
    structure cannot be walked. It does not decide validity: c2pa-rs's data hash covers the
    whole file (appended bytes included) and already reports the mismatch.
    """
    try:
        if media_type == PNG:
            return _png_trailing(data)
        if media_type == JPEG:
            return _jpeg_trailing(data)
        if media_type == WEBP:
            if len(data) < 12:
                return None
            return max(0, len(data) - (int.from_bytes(data[4:8], "little") + 8))
    except (IndexError, ValueError):
        return None
    return None


def _png_trailing(data: bytes) -> int | None:
    position = 8
    while position + 8 <= len(data):
        length = int.from_bytes(data[position : position + 4], "big")
        kind = data[position + 4 : position + 8]
        position += 12 + length
        if kind == b"IEND":
            return max(0, len(data) - position)
    return None


def _jpeg_trailing(data: bytes) -> int | None:
    position = 2
    while position + 2 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xD9:  # EOI
            return len(data) - (position + 2)
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # no length field
            position += 2
            continue
        if position + 4 > len(data):
            return None
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        position += 2 + length
        if marker == 0xDA:  # start of scan: skip entropy-coded data to the next real marker
            while position + 1 < len(data):
                if (
                    data[position] == 0xFF
                    and data[position + 1] not in (0x00, 0xFF)
                    and not (0xD0 <= data[position + 1] <= 0xD7)
                ):
                    break
                position += 1
    return None


def has_c2pa_segment(data: bytes, media_type: str | None) -> bool:
    """Whether the file has a C2PA container: PNG `caBX` chunk, JPEG APP11 JUMBF, WebP `C2PA`.

    Walks chunk/segment headers only (microseconds, where searching the bytes for "c2pa" costs
    about as much as hashing them). Falls back to that search when the structure cannot be walked,
    so a damaged file errs on the side of "has C2PA" (it is then read properly by c2pa-rs).
    """
    try:
        if media_type == PNG:
            found = _png_has_c2pa(data)
        elif media_type == JPEG:
            found = _jpeg_has_c2pa(data)
        elif media_type == WEBP:
            found = _webp_has_c2pa(data)
        else:
            found = None
    except (IndexError, ValueError):
        found = None
    return (b"c2pa" in data) if found is None else found


def _png_has_c2pa(data: bytes) -> bool | None:
    position = 8
    while position + 8 <= len(data):
        length = int.from_bytes(data[position : position + 4], "big")
        kind = data[position + 4 : position + 8]
        if kind == b"caBX":
            return True
        if kind == b"IEND":
            return False
        position += 12 + length
    return None


def _jpeg_has_c2pa(data: bytes) -> bool | None:
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:
            position += 1
            continue
        if marker in (0xDA, 0xD9):  # start of scan / end of image: metadata segments are before
            return False
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            position += 2
            continue
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        if marker == 0xEB and b"c2pa" in data[position + 4 : position + 2 + length]:
            return True
        position += 2 + length
    return None


def _webp_has_c2pa(data: bytes) -> bool | None:
    if len(data) < 12:
        return None
    position = 12
    while position + 8 <= len(data):
        kind = data[position : position + 4]
        if kind == b"C2PA":
            return True
        length = int.from_bytes(data[position + 4 : position + 8], "little")
        position += 8 + length + (length & 1)
    return False
