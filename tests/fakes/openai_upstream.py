"""A fake OpenAI Images API, built from the documented request and response shapes.

It is the only fake in the suite (the upstream provider is out of reach here). Each test can swap
the behaviour with a handler function, in the manner of httpx's MockTransport.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from PIL import Image

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def make_image(size: tuple[int, int] = (64, 64), fmt: str = "png", colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format={"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}[fmt])
    return buffer.getvalue()


def noise_image(size: tuple[int, int], fmt: str = "png") -> bytes:
    buffer = io.BytesIO()
    Image.frombytes("RGB", size, os.urandom(size[0] * size[1] * 3)).save(
        buffer, format={"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}[fmt]
    )
    return buffer.getvalue()


@dataclass
class FakeOpenAI:
    """Records what it received; answers like the OpenAI Images API unless `handler` is set."""

    received: list[dict[str, Any]] = field(default_factory=list)
    handler: Handler | None = None
    delay_s: float = 0.0
    image_side: int = 64
    #: Random pixels instead of a flat colour: images that do not compress (large answers).
    noise: bool = False

    def app(self) -> web.Application:
        app = web.Application(client_max_size=200 * 1024 * 1024)
        app.router.add_post("/v1/images/generations", self._dispatch)
        app.router.add_post("/v1/images/edits", self._dispatch)
        app.router.add_route("*", "/v1/{tail:.*}", self._dispatch)
        return app

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        if self.handler is not None:
            return await self.handler(request)
        return await self.images(request)

    async def images(self, request: web.Request) -> web.Response:
        if request.path.endswith("/edits"):
            form = await request.post()
            fields: dict[str, Any] = {}
            files: dict[str, list[bytes]] = {}
            for key, value in form.items():
                if hasattr(value, "file"):
                    files.setdefault(key, []).append(value.file.read())
                else:
                    fields[key] = value
            self.received.append({"path": request.path, "fields": fields, "files": files, "headers": dict(request.headers)})
        else:
            fields = await request.json()
            self.received.append({"path": request.path, "fields": fields, "headers": dict(request.headers)})
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        n = int(fields.get("n", 1))
        fmt = fields.get("output_format", "png")
        side = (self.image_side, self.image_side)
        images = [noise_image(side, fmt) if self.noise else make_image(side, fmt, (40 * i % 255, 80, 120)) for i in range(n)]
        data = [{"b64_json": base64.b64encode(image).decode()} for image in images]
        body = {
            "created": 1_700_000_000,
            "data": data,
            "usage": {"input_tokens": 10, "output_tokens": 272 * n, "total_tokens": 10 + 272 * n},
        }
        return web.Response(body=json.dumps(body), content_type="application/json")
