"""A fake fal queue API (and its CDN), from the documented request and response shapes.

Sources: https://docs.fal.ai/model-endpoints/queue (submit `POST /{model_id}` with
`Authorization: Key`, answer `{"request_id", "response_url", "status_url", "cancel_url"}`; status
`GET /{owner}/{app}/requests/{id}/status` answering `IN_QUEUE` with `queue_position`, `IN_PROGRESS`
with `logs`, then `COMPLETED`; result `GET /{owner}/{app}/requests/{id}`; status and result URLs use
the owner and app only, never the model's sub-path), https://fal.ai/docs/api-reference/inference-api
(status 202 while pending, 200 when completed), https://fal.ai/docs/errors (`{"detail": [{"loc",
"msg", "type"}]}`, type `content_policy_violation`), and the FLUX model pages' output
(`{"images": [{"url", "width", "height", "content_type"}], "timings", "seed", "has_nsfw_concepts",
"prompt"}`, `image_size` presets such as `landscape_4_3` = 1024x768).

Images are served by the fake itself under `/files/...` (standing in for `v3.fal.media`).
`pending_polls` sets how many status reads answer before COMPLETED; `error_type` makes the result an
error of that type (422); `cdn_url` replaces the image URL (SSRF tests); `foreign_urls` makes the
submit answer status and response URLs on another host; a `sync_mode` input answers the images as
base64 `data:` URIs, as fal documents for that flag.
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes.openai_upstream import make_image

PRESETS = {"square_hd": (1024, 1024), "square": (512, 512), "portrait_4_3": (768, 1024),
           "portrait_16_9": (576, 1024), "landscape_4_3": (1024, 768), "landscape_16_9": (1024, 576)}


@dataclass
class FakeFal:
    key: str = "fal-upstream-key-id:secret"
    pending_polls: int = 2
    error_type: str | None = None
    cdn_url: str | None = None
    foreign_urls: bool = False
    submitted: list[dict[str, Any]] = field(default_factory=list)
    status_reads: dict[str, int] = field(default_factory=dict)
    results_read: int = 0
    served: int = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/files/{id}/{index}.jpeg", self.file)
        app.router.add_get("/{owner}/{app}/requests/{id}/status", self.status)
        app.router.add_get("/{owner}/{app}/requests/{id}", self.result)
        app.router.add_post("/{model:.+}", self.submit)
        return app

    def _unauthorised(self, request: web.Request) -> web.Response | None:
        if request.headers.get("Authorization") == f"Key {self.key}":
            return None
        return web.json_response({"detail": "No user found for Key ID and Secret"}, status=401)

    async def submit(self, request: web.Request) -> web.Response:
        if (refused := self._unauthorised(request)) is not None:
            return refused
        body = await request.json()
        if not isinstance(body.get("prompt"), str):
            detail = [{"loc": ["body", "prompt"], "msg": "field required", "type": "value_error.missing"}]
            return web.json_response({"detail": detail}, status=422)
        model = request.match_info["model"]
        request_id = str(uuid.uuid4())
        self.submitted.append({"model": model, "body": body, "headers": dict(request.headers), "id": request_id})
        self.status_reads[request_id] = 0
        host = "http://169.254.169.254" if self.foreign_urls else f"{request.scheme}://{request.host}"
        base = f"{host}/{'/'.join(model.split('/')[:2])}/requests/{request_id}"
        return web.json_response({
            "status": "IN_QUEUE", "request_id": request_id, "response_url": base,
            "status_url": f"{base}/status", "cancel_url": f"{base}/cancel", "queue_position": 0,
        })

    def _job(self, request_id: str) -> dict[str, Any] | None:
        return next((job for job in self.submitted if job["id"] == request_id), None)

    async def status(self, request: web.Request) -> web.Response:
        if (refused := self._unauthorised(request)) is not None:
            return refused
        request_id = request.match_info["id"]
        if self._job(request_id) is None:
            return web.json_response({"detail": "Request not found"}, status=404)
        self.status_reads[request_id] += 1
        base = f"{request.scheme}://{request.host}{request.path.removesuffix('/status')}"
        reads = self.status_reads[request_id]
        if reads <= self.pending_polls:
            if reads == 1:
                return web.json_response({"status": "IN_QUEUE", "queue_position": 0, "response_url": base}, status=202)
            return web.json_response({"status": "IN_PROGRESS", "logs": [], "response_url": base}, status=202)
        return web.json_response({"status": "COMPLETED", "logs": [], "metrics": {"inference_time": 1.2}, "response_url": base})

    async def result(self, request: web.Request) -> web.Response:
        if (refused := self._unauthorised(request)) is not None:
            return refused
        job = self._job(request.match_info["id"])
        if job is None:
            return web.json_response({"detail": "Request not found"}, status=404)
        self.results_read += 1
        if self.error_type is not None:
            detail = [{"loc": ["body", "prompt"], "msg": "The request was refused.", "type": self.error_type,
                       "url": f"https://docs.fal.ai/errors#{self.error_type}"}]
            return web.json_response({"detail": detail}, status=422, headers={"X-Fal-Retryable": "false"})
        body = job["body"]
        size = body.get("image_size", "landscape_4_3")
        width, height = (size["width"], size["height"]) if isinstance(size, dict) else PRESETS[size]
        base = f"{request.scheme}://{request.host}"
        count = int(body.get("num_images", 1))
        images = [
            {"url": self._url(base, job["id"], index, bool(body.get("sync_mode"))), "width": width, "height": height, "content_type": "image/jpeg"}
            for index in range(count)
        ]
        return web.json_response({
            "images": images, "timings": {"inference": 1.2}, "seed": 1234,
            "has_nsfw_concepts": [False] * count, "prompt": body["prompt"],
        })

    def _url(self, base: str, request_id: str, index: int, inline: bool) -> str:
        if inline:
            return "data:image/jpeg;base64," + base64.b64encode(self._image(index)).decode("ascii")
        return self.cdn_url or f"{base}/files/{request_id}/{index}.jpeg"

    @staticmethod
    def _image(index: int) -> bytes:
        return make_image((48, 36), "jpeg", (30 + 60 * index, 120, 200))

    async def file(self, request: web.Request) -> web.Response:
        self.served += 1
        return web.Response(body=self._image(int(request.match_info["index"])), content_type="image/jpeg")
