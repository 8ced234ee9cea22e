"""A fake OpenAI Images API, built from the documented request and response shapes.

It is the only fake in the suite (the upstream provider is out of reach here). Each test can swap
the behaviour with a handler function, in the manner of httpx's MockTransport, or set `fault` to one
of the `FAULTS` a real provider shows (a 5xx, a connection reset half-way through the answer, a
truncated image, an answer that trickles in), and set it back to None to end the fault.
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

#: Faults `FakeOpenAI.fault` can act out:
#: - server_error: HTTP 500 with OpenAI's server-error body;
#: - reset_mid_body: the headers and half of the JSON answer, then the connection is reset;
#: - truncated_image: a well-formed answer whose images are cut in half (PNG signature intact);
#: - drip: the answer trickles in, 64 bytes every `drip_s` seconds.
FAULTS = ("server_error", "reset_mid_body", "truncated_image", "drip")


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
    #: One of `FAULTS` to act out instead of a normal answer; None answers normally.
    fault: str | None = None
    #: Seconds between two chunks of a `drip` answer.
    drip_s: float = 0.05

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

    async def images(self, request: web.Request) -> web.StreamResponse:
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
        if self.fault == "truncated_image":
            images = [image[: len(image) // 2] for image in images]
        data = [{"b64_json": base64.b64encode(image).decode()} for image in images]
        body = {
            "created": 1_700_000_000,
            "data": data,
            "usage": {"input_tokens": 10, "output_tokens": 272 * n, "total_tokens": 10 + 272 * n},
        }
        if self.fault == "server_error":
            error = {"message": "The server had an error while processing your request.", "type": "server_error", "param": None, "code": None}
            return web.json_response({"error": error}, status=500)
        if self.fault in ("reset_mid_body", "drip"):
            return await self._stream_faulty(request, json.dumps(body).encode())
        return web.Response(body=json.dumps(body), content_type="application/json")

    async def _stream_faulty(self, request: web.Request, payload: bytes) -> web.StreamResponse:
        """Announce the whole answer (Content-Length), then reset half-way or let it trickle in."""
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = len(payload)
        await response.prepare(request)
        if self.fault == "reset_mid_body":
            await response.write(payload[: len(payload) // 2])
            await asyncio.sleep(0.05)  # let the half reach the client before the reset
            assert request.transport is not None
            request.transport.abort()
            return response
        for start in range(0, len(payload), 64):
            await response.write(payload[start : start + 64])
            await asyncio.sleep(self.drip_s)
        await response.write_eof()
        return response
