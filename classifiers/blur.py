"""The blur action: a heavily blurred copy of an image, in the same format, with no metadata.

The blur is strong enough that the content cannot be recognised (the image is first reduced to at
most `BLUR_GRID` pixels a side, blurred, then scaled back), and cheap at any size. The copy carries
none of the original's metadata (EXIF, text chunks, ICC), which may describe the content.

Must never: return the original bytes, change the pixel dimensions, or import torch.
"""

from __future__ import annotations

import io

from PIL import Image, ImageFilter

from classifiers.decode import (
    DEFAULT_LIMITS,
    FORMAT_MEDIA_TYPES,
    DecodeLimits,
    open_image,
)
from classifiers.errors import ImageDecodeError

#: The blurred copy holds no more detail than an image this many pixels a side.
BLUR_GRID = 24

_MEDIA_TYPE_FORMATS = {media_type: fmt for fmt, media_type in FORMAT_MEDIA_TYPES.items()}
_MEDIA_TYPE_FORMATS["image/jpg"] = "JPEG"


def blur_image(data: bytes, media_type: str, limits: DecodeLimits = DEFAULT_LIMITS) -> bytes:
    """A heavily blurred copy of `data`, encoded as `media_type` (PNG, JPEG, WebP or GIF)."""
    fmt = _MEDIA_TYPE_FORMATS.get(media_type.split(";")[0].strip().lower())
    if fmt is None:
        raise ImageDecodeError(f"cannot blur images of media type {media_type!r}")
    image = open_image(data, limits)
    keep_alpha = fmt in ("PNG", "WEBP") and (
        image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    )
    work = image.convert("RGBA" if keep_alpha else "RGB")
    width, height = work.size
    scale = BLUR_GRID / max(width, height)
    small_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = work.resize(small_size, Image.Resampling.BOX) if scale < 1 else work
    small = small.filter(ImageFilter.GaussianBlur(radius=max(1.0, BLUR_GRID / 12)))
    blurred = small.resize((width, height), Image.Resampling.BICUBIC)
    blurred = blurred.filter(ImageFilter.GaussianBlur(radius=max(2.0, max(width, height) / 64)))
    out = io.BytesIO()
    if fmt == "JPEG":
        blurred.convert("RGB").save(out, format="JPEG", quality=85)
    elif fmt == "GIF":
        blurred.convert("RGB").save(out, format="GIF")
    else:
        blurred.save(out, format=fmt)
    return out.getvalue()
