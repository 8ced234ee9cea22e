from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image, PngImagePlugin

from classifiers.blur import blur_image
from classifiers.decode import DecodeLimits, decode_image, sniff_media_type
from classifiers.errors import ImageDecodeError

from .conftest import colour_image, encode


def png_claiming(width: int, height: int) -> bytes:
    """A tiny but well-formed PNG header (valid CRCs) claiming huge dimensions: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def test_decodes_png_and_jpeg_to_rgb() -> None:
    image = colour_image("safe", 1)
    for fmt in ("PNG", "JPEG", "WEBP"):
        decoded = decode_image(encode(image, fmt))
        assert decoded.mode == "RGB" and decoded.size == image.size


def test_transparency_is_composited_on_white() -> None:
    transparent = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    assert decode_image(encode(transparent)).getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize("size", [(100_000, 100_000), (8_000, 8_000), (20_000, 10)])
def test_rejects_decompression_bomb_before_decoding(size: tuple[int, int]) -> None:
    data = png_claiming(*size)
    assert len(data) < 200
    with pytest.raises(ImageDecodeError, match="limit"):
        decode_image(data)


def test_rejects_truncated_png_and_jpeg() -> None:
    image = colour_image("violence", 2, size=64)
    for fmt in ("PNG", "JPEG"):
        data = encode(image, fmt)
        with pytest.raises(ImageDecodeError, match="truncated|corrupt"):
            decode_image(data[: len(data) // 2])


@pytest.mark.parametrize("data", [b"", b"hello, this is not an image", b"%PDF-1.7\n" + b"0" * 100, b"\x89PNG\r\n\x1a\n"])
def test_rejects_non_image_data(data: bytes) -> None:
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data)
    assert "Traceback" not in str(info.value) and str(info.value)


def test_rejects_oversized_bytes_and_unlisted_formats() -> None:
    data = encode(colour_image("safe", 3))
    with pytest.raises(ImageDecodeError, match="bytes"):
        decode_image(data, DecodeLimits(max_bytes=100))
    with pytest.raises(ImageDecodeError, match="accepted format"):
        decode_image(encode(colour_image("safe", 3), "BMP"))
    with pytest.raises(ImageDecodeError, match="accepted format"):
        decode_image(data, DecodeLimits(formats=("JPEG",)))


def test_rejects_animation() -> None:
    frames = [colour_image("safe", seed) for seed in range(2)]
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:])
    with pytest.raises(ImageDecodeError, match="animated"):
        decode_image(out.getvalue())


def test_sniff_media_type() -> None:
    assert sniff_media_type(encode(colour_image("safe", 1))) == "image/png"
    assert sniff_media_type(encode(colour_image("safe", 1), "JPEG")) == "image/jpeg"
    assert sniff_media_type(b"nope") is None


@pytest.mark.parametrize(("fmt", "media_type"), [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp")])
def test_blur_keeps_size_and_format_and_destroys_detail(fmt: str, media_type: str) -> None:
    checker = Image.new("RGB", (96, 64))
    checker.putdata([(255, 255, 255) if (x // 4 + y // 4) % 2 else (0, 0, 0) for y in range(64) for x in range(96)])
    info = PngImagePlugin.PngInfo()
    info.add_text("prompt", "secret prompt")
    original = io.BytesIO()
    checker.save(original, format=fmt, **({"pnginfo": info} if fmt == "PNG" else {}))
    blurred_bytes = blur_image(original.getvalue(), media_type)
    assert sniff_media_type(blurred_bytes) == media_type
    blurred = Image.open(io.BytesIO(blurred_bytes))
    assert blurred.size == checker.size
    assert b"secret prompt" not in blurred_bytes
    low, high = blurred.convert("L").getextrema()
    assert high - low < 60  # a black/white checkerboard becomes near-uniform grey


def test_blur_refuses_unknown_media_type_and_bad_data() -> None:
    with pytest.raises(ImageDecodeError):
        blur_image(encode(colour_image("safe", 1)), "image/tiff")
    with pytest.raises(ImageDecodeError):
        blur_image(b"not an image", "image/png")
