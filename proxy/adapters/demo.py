"""The built-in `demo` provider: draws the prompt into an image, so the whole flow runs with no key.

It is a provider like any other, behind the same `Provider` interface; it is not a test double.
Its images say plainly that they come from the demo generator. Drawing and encoding run in a worker
thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import re
import textwrap
import time

from PIL import Image, ImageDraw, ImageFont

from ..errors import InvalidRequestError
from ..exchange import GeneratedImage, GenerationRequest, GenerationResult
from .base import Provider

#: Largest side the demo draws; bigger requested sizes are refused with a clear error.
MAX_SIDE = 4096
DEFAULT_SIZE = (1024, 1024)


def parse_size(size: str | None) -> tuple[int, int]:
    if size in (None, "", "auto"):
        return DEFAULT_SIZE
    match = re.fullmatch(r"(\d{2,5})x(\d{2,5})", size)
    if not match:
        raise InvalidRequestError(f"Invalid size {size!r}: expected WIDTHxHEIGHT or 'auto'.", param="size")
    width, height = int(match.group(1)), int(match.group(2))
    if not (16 <= width <= MAX_SIDE and 16 <= height <= MAX_SIDE):
        raise InvalidRequestError(
            f"Invalid size {size!r}: each side must be between 16 and {MAX_SIDE} pixels.", param="size"
        )
    return width, height


def draw_prompt(prompt: str, size: tuple[int, int], index: int, output_format: str) -> bytes:
    """Render `prompt` on a colour derived from the prompt and the image index."""
    digest = hashlib.sha256(f"{prompt}\x00{index}".encode()).digest()
    background = (64 + digest[0] % 160, 64 + digest[1] % 160, 64 + digest[2] % 160)
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    font_size = max(12, min(size) // 16)
    try:
        font: ImageFont.ImageFont | ImageFont.FreeTypeFont = ImageFont.load_default(size=font_size)
    except TypeError:  # Pillow without FreeType
        font = ImageFont.load_default()
    columns = max(8, int(size[0] / (font_size * 0.6)))
    lines = ["imagegate demo generator", f"image {index + 1}", ""] + textwrap.wrap(prompt, columns)[:12]
    y = font_size
    for line in lines:
        draw.text((font_size, y), line, fill=(255, 255, 255), font=font)
        y += int(font_size * 1.3)
    buffer = io.BytesIO()
    pil_format = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}[output_format]
    options = {"quality": 90} if pil_format in ("JPEG", "WEBP") else {"compress_level": 1}
    image.save(buffer, format=pil_format, **options)
    return buffer.getvalue()


class DemoProvider(Provider):
    def __init__(self, name: str = "demo", *, delay_s: float = 0.0) -> None:
        self.name = name
        self.delay_s = delay_s

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        started = time.perf_counter()
        size = parse_size(request.size)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        prompt = request.prompt
        if request.operation == "edit":
            prompt = f"[edit of {len(request.images)} image(s)] {prompt}"
        images = await asyncio.to_thread(
            lambda: [draw_prompt(prompt, size, i, request.output_format) for i in range(request.n)]
        )
        return GenerationResult(
            provider=self.name,
            model=request.model,
            images=[GeneratedImage(data=data, media_type=request.media_type) for data in images],
            metadata={"size": f"{size[0]}x{size[1]}", "output_format": request.output_format},
            upstream_latency_s=time.perf_counter() - started,
        )
