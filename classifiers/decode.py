"""Safe decoding of untrusted image bytes (provider outputs and clients' input images) into RGB.

Checks size in bytes, then the dimensions from the header BEFORE any pixel is decoded, so a
decompression bomb (a small file claiming huge dimensions) is refused without allocating it; then
decodes fully, so truncated data fails here rather than later. Only a short allow-list of formats
reaches a Pillow decoder.

Must never: import torch (the proxy uses it for input checks), change Pillow's global settings
(`MAX_IMAGE_PIXELS`, `LOAD_TRUNCATED_IMAGES`), classify only part of an image (animations are
refused, not reduced to their first frame), or put library internals into the error message.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from classifiers.errors import ImageDecodeError

#: Pillow format names accepted, and the media type each is served as.
FORMAT_MEDIA_TYPES: dict[str, str] = {
    "PNG": "image/png",
    "JPEG": "image/jpeg",
    "WEBP": "image/webp",
    "GIF": "image/gif",
}


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    """What an image may cost us before we refuse to decode it."""

    max_bytes: int = 32 * 1024 * 1024
    max_pixels: int = 40_000_000  # about 6300 x 6300
    max_side: int = 16_384
    formats: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "GIF")
    allow_animated: bool = False

    def __post_init__(self) -> None:
        if self.max_bytes <= 0 or self.max_pixels <= 0 or self.max_side <= 0:
            raise ValueError("decode limits must be positive")
        unknown = set(self.formats) - set(FORMAT_MEDIA_TYPES)
        if unknown:
            raise ValueError(f"unsupported image formats in decode limits: {sorted(unknown)}")


DEFAULT_LIMITS = DecodeLimits()


def sniff_media_type(data: bytes) -> str | None:
    """The media type announced by the data's magic bytes, or None; decodes nothing."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    return None


def open_image(data: bytes, limits: DecodeLimits = DEFAULT_LIMITS) -> Image.Image:
    """Open and fully decode `data` after the byte, dimension and format checks; keeps the mode."""
    if not data:
        raise ImageDecodeError("image data is empty")
    if len(data) > limits.max_bytes:
        raise ImageDecodeError(
            f"image is {len(data)} bytes, more than the limit of {limits.max_bytes} bytes"
        )
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb warning becomes an error; our limit below is usually stricter.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=list(limits.formats))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageDecodeError("image dimensions exceed the decoding limit") from error
    except UnidentifiedImageError as error:
        raise ImageDecodeError(
            f"data is not an image in an accepted format ({', '.join(limits.formats)})"
        ) from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageDecodeError("image header is corrupt or truncated") from error

    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageDecodeError("image has no pixels")
    if width > limits.max_side or height > limits.max_side or width * height > limits.max_pixels:
        raise ImageDecodeError(
            f"image is {width}x{height} pixels, more than the limit of {limits.max_pixels} pixels "
            f"or {limits.max_side} pixels a side"
        )
    if getattr(image, "n_frames", 1) > 1 and not limits.allow_animated:
        raise ImageDecodeError("animated images are not accepted")
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # Someone else in the process relaxed Pillow; we would silently accept cut-off images.
        raise ImageDecodeError("refusing to decode: Pillow is set to accept truncated images")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombWarning) as error:
        raise ImageDecodeError("image data is truncated or corrupt") from error
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB as a viewer shows it: EXIF orientation applied, transparency composited onto white."""
    image = ImageOps.exif_transpose(image)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode != "RGB":
        return image.convert("RGB")
    return image


def decode_image(data: bytes, limits: DecodeLimits = DEFAULT_LIMITS) -> Image.Image:
    """Decode untrusted bytes into an RGB image, or raise `ImageDecodeError` with a client-safe message."""
    image = open_image(data, limits)
    try:
        return to_rgb(image)
    except (OSError, ValueError) as error:
        raise ImageDecodeError("image data is truncated or corrupt") from error
