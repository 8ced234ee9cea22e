"""A fake Replicate predictions API, from the documented request and response shapes.

Source: https://replicate.com/docs/reference/http (create a prediction: `POST /v1/models/{owner}/
{name}/predictions` with `{"input"}` or `POST /v1/predictions` with `{"version", "input"}`, header
`Prefer: wait[=N]`; get: `GET /v1/predictions/{id}`; the prediction object's fields `id`, `model`,
`version`, `input`, `logs`, `output`, `data_removed`, `error`, `status`, `created_at`, `started_at`,
`completed_at`, `urls`, `metrics`). Output images are URLs on the fake's `/delivery/...`.

`processing_polls` sets how many reads answer `processing` before `succeeded`; with `Prefer: wait`
the create answers `succeeded` at once when `processing_polls` is 0.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes.openai_upstream import make_image


@dataclass
class FakeReplicate:
    token: str = "r8_upstream_token"
    processing_polls: int = 1
    fail_with: str | None = None
    created: list[dict[str, Any]] = field(default_factory=list)
    reads: dict[str, int] = field(default_factory=dict)
    predictions: dict[str, dict[str, Any]] = field(default_factory=dict)
    delivered: int = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/models/{owner}/{name}/predictions", self.create)
        app.router.add_post("/v1/predictions", self.create)
        app.router.add_get("/v1/predictions/{id}", self.get)
        app.router.add_get("/delivery/{id}/{index}.png", self.delivery)
        return app

    def _authorised(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.token}"

    def _unauthorised(self) -> web.Response:
        return web.json_response({"title": "Unauthenticated", "detail": "You did not pass a valid authentication token", "status": 401}, status=401)

    async def create(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return self._unauthorised()
        body = await request.json()
        model = f"{request.match_info['owner']}/{request.match_info['name']}" if "owner" in request.match_info else body.get("version")
        prediction_id = uuid.uuid4().hex[:20]
        base = f"{request.scheme}://{request.host}"
        prediction = {
            "id": prediction_id, "model": model, "version": "v1", "input": body["input"], "logs": "", "output": None,
            "data_removed": False, "error": None, "status": "starting", "created_at": "2025-01-01T00:00:00Z",
            "urls": {"get": f"{base}/v1/predictions/{prediction_id}", "cancel": f"{base}/v1/predictions/{prediction_id}/cancel"},
        }
        self.created.append({"path": request.path, "body": body, "headers": dict(request.headers)})
        self.predictions[prediction_id] = prediction
        self.reads[prediction_id] = 0
        if request.headers.get("Prefer", "").startswith("wait") and self.processing_polls == 0:
            self._finish(prediction, base)
        return web.json_response(prediction, status=201)

    def _finish(self, prediction: dict[str, Any], base: str) -> None:
        if self.fail_with:
            prediction.update(status="failed", error=self.fail_with)
            return
        count = int(prediction["input"].get("num_outputs", 1))
        prediction.update(
            status="succeeded",
            output=[f"{base}/delivery/{prediction['id']}/{index}.png" for index in range(count)],
            completed_at="2025-01-01T00:00:02Z",
            metrics={"predict_time": 1.25},
        )

    async def get(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return self._unauthorised()
        prediction = self.predictions.get(request.match_info["id"])
        if prediction is None:
            return web.json_response({"detail": "Not found."}, status=404)
        self.reads[prediction["id"]] += 1
        if prediction["status"] not in ("succeeded", "failed"):
            if self.reads[prediction["id"]] > self.processing_polls:
                self._finish(prediction, f"{request.scheme}://{request.host}")
            else:
                prediction["status"] = "processing"
        return web.json_response(prediction)

    async def delivery(self, request: web.Request) -> web.Response:
        self.delivered += 1
        return web.Response(body=make_image((32, 32), "png", (int(request.match_info["index"]) * 50 % 255, 60, 60)), content_type="image/png")
