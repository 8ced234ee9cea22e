"""A fake Black Forest Labs FLUX API, from the documented request and response shapes.

Sources: https://docs.bfl.ai/quick_start/generating_images (submit `POST /v1/{model}` with `x-key`,
answer `{"id", "polling_url"}`; poll `GET /v1/get_result?id=` answering `{"id", "status", "result"}`
with `Pending`, then `Ready` and `result.sample`, a signed delivery URL) and
https://docs.bfl.ai/api_integration/integration_guidelines (always follow `polling_url`).

`pending_polls` sets how many polls answer `Pending` first; `sample_url` replaces the delivery URL
(SSRF tests point it at redirects, slow or oversized answers). Extra routes serve those answers.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes.openai_upstream import make_image, noise_image


@dataclass
class FakeBFL:
    key: str = "bfl-upstream-key"
    pending_polls: int = 2
    sample_url: str | None = None
    status: str = "Ready"
    base_url: str = ""
    #: When set, the submit answer reports the task's cost in credits, as BFL's API does
    #: (`cost`, `input_mp`, `output_mp`; https://docs.bfl.ai/api-reference).
    cost_credits: float | None = None
    submitted: list[dict[str, Any]] = field(default_factory=list)
    polls: dict[str, int] = field(default_factory=dict)
    samples_served: int = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/{model}", self.submit)
        app.router.add_get("/v1/get_result", self.get_result)
        app.router.add_get("/delivery/{id}.jpeg", self.sample)
        app.router.add_get("/redirect", self.redirect)
        app.router.add_get("/big", self.big)
        app.router.add_get("/slow", self.slow)
        return app

    def _authorised(self, request: web.Request) -> bool:
        return request.headers.get("x-key") == self.key

    async def submit(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return web.json_response({"detail": "Not authenticated"}, status=403)
        body = await request.json()
        if "prompt" not in body:
            return web.json_response({"detail": [{"loc": ["body", "prompt"], "msg": "field required"}]}, status=422)
        task = str(uuid.uuid4())
        self.submitted.append({"model": request.match_info["model"], "body": body, "headers": dict(request.headers), "id": task})
        self.polls[task] = 0
        base = self.base_url or f"{request.scheme}://{request.host}"
        answer: dict[str, Any] = {"id": task, "polling_url": f"{base}/v1/get_result?id={task}"}
        if self.cost_credits is not None:
            width, height = int(body.get("width") or 1024), int(body.get("height") or 768)
            answer.update(cost=self.cost_credits, input_mp=0, output_mp=round(width * height / 1e6, 2))
        return web.json_response(answer)

    async def get_result(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return web.json_response({"detail": "Not authenticated"}, status=403)
        task = request.query.get("id", "")
        if task not in self.polls:
            return web.json_response({"id": task, "status": "Task not found", "result": None}, status=404)
        self.polls[task] += 1
        if self.polls[task] <= self.pending_polls:
            return web.json_response({"id": task, "status": "Pending", "result": None, "progress": 0.5})
        if self.status != "Ready":
            return web.json_response({"id": task, "status": self.status, "result": None})
        base = self.base_url or f"{request.scheme}://{request.host}"
        sample = self.sample_url or f"{base}/delivery/{task}.jpeg?se=2030-01-01&sig=abc"
        return web.json_response({"id": task, "status": "Ready", "result": {"sample": sample, "seed": 42, "prompt": "echo"}})

    async def sample(self, request: web.Request) -> web.Response:
        self.samples_served += 1
        return web.Response(body=make_image((40, 30), "jpeg", (10, 200, 90)), content_type="image/jpeg")

    async def redirect(self, request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["to"])

    async def big(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=noise_image((800, 800), "png"), content_type="image/png")

    async def slow(self, request: web.Request) -> web.Response:
        await asyncio.sleep(3)
        return web.Response(body=make_image((8, 8), "jpeg"), content_type="image/jpeg")
