"""A fake Stability AI v2beta Stable Image API, from the documented request and response shapes.

Source: https://platform.stability.ai/docs/api-reference (Stable Image: generate ultra/core/sd3,
edit). Requests are multipart forms with `Authorization: Bearer`; the answer follows `Accept`:
`image/*` gives raw bytes with `finish-reason` and `seed` headers, `application/json` gives
`{"image": base64, "finish_reason", "seed"}`; errors are `{"id", "name", "errors": [...]}`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes.openai_upstream import make_image

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def stability_error(status: int, name: str, message: str) -> web.Response:
    body = {"id": "a1b2c3d4e5f6", "name": name, "errors": [message]}
    return web.Response(body=json.dumps(body), status=status, content_type="application/json")


@dataclass
class FakeStability:
    key: str = "sk-stability-upstream"
    received: list[dict[str, Any]] = field(default_factory=list)
    handler: Handler | None = None
    seed: int = 1234

    def app(self) -> web.Application:
        app = web.Application(client_max_size=50 * 1024 * 1024)
        app.router.add_post("/v2beta/stable-image/generate/{family}", self._dispatch)
        app.router.add_post("/v2beta/stable-image/edit/{operation}", self._dispatch)
        return app

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        if self.handler is not None:
            return await self.handler(request)
        if request.headers.get("Authorization") != f"Bearer {self.key}":
            return stability_error(401, "unauthorized", "authorization: invalid or missing")
        if not request.content_type.startswith("multipart/form-data"):
            return stability_error(400, "bad_request", "content-type: must be multipart/form-data")
        form = await request.post()
        fields = {key: value for key, value in form.items() if not hasattr(value, "file")}
        files = {key: value.file.read() for key, value in form.items() if hasattr(value, "file")}
        self.received.append({"path": request.path, "fields": fields, "files": files, "headers": dict(request.headers)})
        if request.path.endswith("/generate/sd3") and fields.get("model") == "sd3-unknown":
            return stability_error(400, "bad_request", "model: must be one of sd3.5-large, sd3.5-medium")
        fmt = str(fields.get("output_format", "png"))
        image = make_image((64, 48), fmt, (30, 120, 200))
        accept = request.headers.get("Accept", "image/*")
        if accept.startswith("application/json"):
            body = {"image": base64.b64encode(image).decode(), "finish_reason": "SUCCESS", "seed": self.seed}
            return web.json_response(body)
        return web.Response(body=image, content_type=f"image/{fmt}", headers={"finish-reason": "SUCCESS", "seed": str(self.seed)})
