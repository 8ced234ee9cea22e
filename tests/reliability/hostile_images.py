"""Hostile image files, built byte by byte: decompression bombs, polyglots, things labelled as images.

The bombs are small, well-formed headers claiming 8000 x 8000 pixels (64 megapixels): above
imagegate's decoding limit (40 megapixels) but below Pillow's own bomb threshold (89 megapixels for a
warning, 179 for an error), so only imagegate's own check stands between them and a 192 MB decode.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib

from PIL import Image

BOMB_SIDE = 8000


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(width: int = BOMB_SIDE, height: int = BOMB_SIDE) -> bytes:
    """IHDR claiming width x height RGB, then a megabyte of zeros compressed to about a kilobyte."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * (1 << 20), 9)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", pixels) + _png_chunk(b"IEND", b"")


def jpeg_bomb(width: int = BOMB_SIDE, height: int = BOMB_SIDE) -> bytes:
    """A real 16 x 16 JPEG whose start-of-frame segment is rewritten to claim width x height."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 20, 30)).save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    position = 2
    while position < len(data):
        marker, length = data[position + 1], struct.unpack(">H", data[position + 2 : position + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):  # SOF: length(2) precision(1) height(2) width(2)
            struct.pack_into(">HH", data, position + 5, height, width)
            return bytes(data)
        position += 2 + length
    raise AssertionError("no start-of-frame segment")


def _riff_chunk(kind: bytes, data: bytes) -> bytes:
    return kind + struct.pack("<I", len(data)) + data + (b"\x00" if len(data) % 2 else b"")


def webp_bomb(width: int = BOMB_SIDE, height: int = BOMB_SIDE) -> bytes:
    """An extended WebP: a VP8X canvas of width x height, and a lossless frame header claiming the same."""
    canvas = bytes(4) + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    frame = b"\x2f" + ((width - 1) | ((height - 1) << 14)).to_bytes(4, "little") + bytes(64)
    body = b"WEBP" + _riff_chunk(b"VP8X", canvas) + _riff_chunk(b"VP8L", frame)
    return b"RIFF" + struct.pack("<I", len(body)) + body


BOMBS = {"png": png_bomb, "jpeg": jpeg_bomb, "webp": webp_bomb}

HTML_PAYLOAD = b"<html><body><script>alert(document.cookie)</script></body></html>"
SVG_PAYLOAD = b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"><script>alert(2)</script></svg>'


def zip_payload() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("payload.html", HTML_PAYLOAD)
    return buffer.getvalue()


def contains_payload(data: bytes) -> bool:
    return b"<script>" in data or b"PK\x03\x04" in data
