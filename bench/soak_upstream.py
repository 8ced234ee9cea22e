"""A fake OpenAI Images upstream for the soak run: documented shapes, realistic delays, real images.

Real image models take seconds per call (OpenAI's gpt-image-1 and FLUX.1 typically 2-15 s), so each
answer waits a random delay drawn uniformly from [delay_min_s, delay_max_s] times `scale` (the soak
runs scaled down, 0.1 by default: 0.2-1.5 s). Images are "generated-like" (smooth colour fields
with mild noise: they compress like model output, a 1024x1024 PNG is about 2 MB, a 2048x2048 one
about 8 MB), made once per size and format and reused. A prompt containing `FAULT_MARKER` gets an
OpenAI-shaped HTTP 500, the soak's intended upstream fault. `GET /soak/stats` returns how many
calls of each kind arrived, so the soak can check that blocked prompts never reached the upstream.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from aiohttp import web
from PIL import Image

FAULT_MARKER = "[soak:upstream-fault]"
PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


def generated_like(width: int, height: int, seed: int) -> np.ndarray:
    """Smooth shapes plus mild noise: compresses like a generated image, unlike pure noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    y, x = y / height, x / width
    red = 127 + 120 * np.sin(6 * x + 2 * y + seed)
    green = 127 + 120 * np.cos(5 * y - 3 * x * y)
    blue = 127 + 120 * np.sin(9 * x * y + 1)
    pixels = np.stack([red, green, blue], axis=-1) + rng.normal(0, 6, (height, width, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8)


def encode(pixels: np.ndarray, output_format: str) -> bytes:
    buffer = io.BytesIO()
    options = {"quality": 90} if output_format in ("jpeg", "webp") else {"compress_level": 1}
    Image.fromarray(pixels).save(buffer, PIL_FORMATS[output_format], **options)
    return buffer.getvalue()


@dataclass
class SoakUpstream:
    """The fake provider's state: delays, the image cache and the call counters."""

    delay_min_s: float = 2.0
    delay_max_s: float = 15.0
    scale: float = 0.1
    seed: int = 0
    calls: Counter[str] = field(default_factory=Counter)
    _images: dict[tuple[str, str], str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)

    def image_b64(self, size: str, output_format: str) -> str:
        """The base64 image for this size and format, drawn on first use and then reused."""
        key = (size, output_format)
        if key not in self._images:
            match = re.fullmatch(r"(\d+)x(\d+)", size)
            width, height = (int(match.group(1)), int(match.group(2))) if match else (1024, 1024)
            self._images[key] = base64.b64encode(encode(generated_like(width, height, self.seed), output_format)).decode()
        return self._images[key]

    def delay(self) -> float:
        return self._random.uniform(self.delay_min_s, self.delay_max_s) * self.scale

    async def images(self, request: web.Request) -> web.Response:
        edit = request.path.endswith("/edits")
        fields = await self._fields(request, edit)
        prompt = str(fields.get("prompt", ""))
        kind = "fault" if FAULT_MARKER in prompt else "edit" if edit else "generate"
        self.calls[kind] += 1
        await asyncio.sleep(self.delay())
        if kind == "fault":
            error = {"message": "The server had an error processing your request.", "type": "server_error",
                     "param": None, "code": None}
            return web.json_response({"error": error}, status=500)
        size, output_format, n = str(fields.get("size") or "1024x1024"), str(fields.get("output_format") or "png"), int(fields.get("n", 1))
        data = [{"b64_json": self.image_b64(size, output_format)} for _ in range(n)]
        usage = {"input_tokens": 10, "output_tokens": 272 * n, "total_tokens": 10 + 272 * n}
        body = {"created": 1_700_000_000, "data": data, "usage": usage, "size": size, "output_format": output_format}
        return web.Response(body=json.dumps(body), content_type="application/json")

    @staticmethod
    async def _fields(request: web.Request, edit: bool) -> dict[str, object]:
        if not edit:
            return dict(await request.json())
        form = await request.post()
        return {key: value for key, value in form.items() if isinstance(value, str)}

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response(dict(self.calls))

    def app(self) -> web.Application:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_post("/v1/images/generations", self.images)
        app.router.add_post("/v1/images/edits", self.images)
        app.router.add_get("/soak/stats", self.stats)
        return app


def serve(port: int, delay_min_s: float, delay_max_s: float, scale: float, images: list[tuple[str, str]]) -> None:
    """Process entry point: draw the (size, format) images the soak asks for up front, then serve
    until terminated (so no request waits for a drawing)."""
    upstream = SoakUpstream(delay_min_s=delay_min_s, delay_max_s=delay_max_s, scale=scale)
    for size, output_format in images:
        upstream.image_b64(size, output_format)
    web.run_app(upstream.app(), host="127.0.0.1", port=port, print=None, access_log=None, backlog=1024)
