"""Replicate's predictions API as clients see it, mounted under `/replicate`.

The official `replicate` SDK works unchanged with `base_url="https://imagegate.example/replicate"`
(https://replicate.com/docs/reference/http): `POST /v1/models/{owner}/{name}/predictions` or
`POST /v1/predictions` (`{"version", "input"}`) create a prediction, `Prefer: wait[=N]` holds the
answer until the job is processed (at most 60 s), `GET /v1/predictions/{id}` reads it. `output`
lists imagegate's expiring signed URLs of the moderated, signed copies, never Replicate's delivery
URLs. A `webhook` receives the processed prediction, signed the Standard Webhooks way as Replicate
signs; the secret is at `GET /v1/webhooks/default/secret`, as on Replicate. Errors use Replicate's
problem shape `{"title", "detail", "status"}`.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from typing import Any

from aiohttp import web

from ..errors import ImagegateError, InvalidRequestError, UpstreamStatusError
from ..exchange import Exchange, GenerationRequest
from ..jobs import INPUT_KEY, WEBHOOK_KEY, JobRecord
from .surface import ParseContext, SurfaceRoute, load_json_object, read_limited

PREFIX = "/replicate"
_WAIT = re.compile(r"^\s*wait(?:\s*=\s*(\d+))?\s*$")


def _iso(timestamp: float | None) -> str | None:
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat().replace("+00:00", "Z") if timestamp else None


class ReplicateSurface:
    name = "replicate"

    def routes(self) -> list[SurfaceRoute]:
        return [
            SurfaceRoute("POST", PREFIX + "/v1/models/{owner}/{name}/predictions", "submit"),
            SurfaceRoute("POST", f"{PREFIX}/v1/predictions", "submit"),
            SurfaceRoute("GET", PREFIX + "/v1/predictions/{id}", "poll"),
            SurfaceRoute("GET", f"{PREFIX}/v1/webhooks/default/secret", "custom", handler=self.webhook_secret),
        ]

    def credential(self, request: web.Request) -> str | None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        return token.strip() or None if scheme.lower() in ("bearer", "token") else None

    async def webhook_secret(self, request: web.Request) -> web.Response:
        from ..app import GATEWAY

        gateway = request.app[GATEWAY]
        caller = gateway.authenticate.identify(self.credential(request))
        assert gateway.jobs is not None
        return web.json_response({"key": gateway.jobs.webhook_secret_for(caller.tenant)})

    def wait_seconds(self, request: web.Request) -> float:
        match = _WAIT.match(request.headers.get("Prefer", ""))
        if not match:
            return 0.0
        return float(min(60, int(match.group(1) or 60)))

    async def parse(self, request: web.Request, route: SurfaceRoute, context: ParseContext) -> GenerationRequest:
        body = load_json_object(await read_limited(request, context.max_body_bytes))
        if not isinstance(body.get("input"), dict):
            raise InvalidRequestError("The body must be an object with an `input` object.", param="input")
        model_input: dict[str, Any] = body["input"]
        if "owner" in request.match_info:
            model = f"{request.match_info['owner']}/{request.match_info['name']}"
        else:
            version = body.get("version")
            if not isinstance(version, str) or not version:
                raise InvalidRequestError("version: required when creating a prediction this way.", param="version")
            model = version.split(":")[0] if "/" in version else version
        prompt = model_input.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise InvalidRequestError("input.prompt: required by imagegate (every prompt is screened).", param="input.prompt")
        webhook = body.get("webhook")
        if isinstance(webhook, str) and webhook:
            if context.check_webhook is not None:
                context.check_webhook(webhook)
            request[WEBHOOK_KEY] = {"url": webhook}
        request[INPUT_KEY] = model_input
        n = model_input.get("num_outputs")
        return GenerationRequest(
            operation="generate",
            model=model,
            prompt=prompt,
            negative_prompt=model_input.get("negative_prompt") if isinstance(model_input.get("negative_prompt"), str) else None,
            n=n if isinstance(n, int) and 1 <= n <= 10 else 1,
            response_format="url",
            extra={key: value for key, value in model_input.items() if key not in ("prompt", "negative_prompt")},
        )

    def render_result(self, exchange: Exchange, request: web.Request) -> web.Response:
        raise AssertionError("Replicate routes are asynchronous jobs")

    def links_sidecars(self, request: web.Request) -> bool:
        return False  # sidecars are named by the image items or served beside the assets

    def render_error(self, error: ImagegateError) -> web.Response:
        if isinstance(error, UpstreamStatusError):
            return web.Response(body=error.body, status=error.status, content_type=error.content_type.split(";")[0] or "application/json")
        status = 422 if error.status == 400 else error.status
        body = {"title": error.code.replace("_", " ").capitalize(), "detail": error.message, "status": status}
        return web.Response(body=json.dumps(body), status=status, content_type="application/problem+json", headers=error.headers)

    # -- jobs ------------------------------------------------------------------------------------

    def job_id(self, request: web.Request) -> str:
        return request.match_info["id"]

    def prediction(self, job: JobRecord, urls: list[str]) -> dict[str, Any]:
        status = {"pending": "processing", "succeeded": "succeeded", "failed": "failed"}[job.status]
        get_url = f"{job.base_url}{PREFIX}/v1/predictions/{job.id}"
        return {
            "id": job.id,
            "model": job.model,
            "version": "",
            "input": job.input,
            "logs": "",
            "output": urls if job.status == "succeeded" else None,
            "data_removed": False,
            "error": (job.error or {}).get("message") if job.status == "failed" else None,
            "status": status,
            "created_at": _iso(job.created_at),
            "started_at": _iso(job.created_at),
            "completed_at": _iso(job.completed_at),
            "urls": {"get": get_url, "cancel": f"{get_url}/cancel"},
            "metrics": {"predict_time": round(job.completed_at - job.created_at, 3)} if job.completed_at else {},
        }

    def render_submitted(self, job: JobRecord, request: web.Request) -> web.Response:
        return web.json_response(self.prediction(job, []), status=201)

    def render_job(self, job: JobRecord, request: web.Request, urls: list[str]) -> web.Response:
        return web.json_response(self.prediction(job, urls), status=201 if request.method == "POST" else 200)

    def webhook_body(self, job: JobRecord, urls: list[str]) -> dict[str, Any]:
        return self.prediction(job, urls)
