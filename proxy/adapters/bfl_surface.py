"""Black Forest Labs' FLUX API as clients see it, mounted under `/bfl`: submit, then poll.

A client changes `https://api.bfl.ai` to `https://imagegate.example/bfl` and keeps its code
(https://docs.bfl.ai/quick_start/generating_images): `POST /v1/{model}` with a JSON body and its
imagegate key in `x-key` answers `{"id", "polling_url"}`, the polling URL being imagegate's
`GET /bfl/v1/get_result?id=...`, which answers `{"id", "status", "result"}` like BFL's: `Pending`
until the job is processed, then `Ready` with `result.sample` an expiring signed URL of imagegate's
moderated, signed copy; `Content Moderated` when the images were withheld; `Error` otherwise.
A `webhook_url` (and `webhook_secret`) in the body receives the same body once processed, signed
(`proxy.webhooks`); it is never forwarded to BFL. Errors before a job exists use BFL's FastAPI shape
`{"detail": ...}` (401/403 for keys, 422 for invalid bodies, 429 for limits).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from aiohttp import web

from ..errors import ImagegateError, InvalidRequestError, UpstreamStatusError
from ..exchange import Exchange, GenerationRequest, InputImage, sniff_media_type
from ..jobs import INPUT_KEY, WEBHOOK_KEY, JobRecord
from .surface import ParseContext, SurfaceRoute, load_json_object, read_limited

PREFIX = "/bfl"
_KNOWN = {"prompt", "width", "height", "output_format", "input_image", "webhook_url", "webhook_secret"}


class BFLSurface:
    name = "bfl"

    def routes(self) -> list[SurfaceRoute]:
        return [
            SurfaceRoute("GET", f"{PREFIX}/v1/get_result", "poll"),
            SurfaceRoute("POST", PREFIX + "/v1/{model:[A-Za-z0-9._-]+}", "submit"),
        ]

    def credential(self, request: web.Request) -> str | None:
        return request.headers.get("x-key") or None

    async def parse(self, request: web.Request, route: SurfaceRoute, context: ParseContext) -> GenerationRequest:
        body = load_json_object(await read_limited(request, context.max_body_bytes))
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise InvalidRequestError("prompt: field required", param="prompt", code="missing_required_parameter")
        images: list[InputImage] = []
        if isinstance(body.get("input_image"), str):
            try:
                data = base64.b64decode(body["input_image"].split(",")[-1], validate=True)
            except (binascii.Error, ValueError) as exc:
                raise InvalidRequestError("input_image: imagegate accepts input images as base64 only.", param="input_image") from exc
            media_type = sniff_media_type(data)
            if media_type is None:
                raise InvalidRequestError("input_image: not a PNG, JPEG or WebP image.", param="input_image")
            images.append(InputImage(data, media_type, "input_image"))
        webhook_url = body.get("webhook_url")
        if isinstance(webhook_url, str) and webhook_url:
            if context.check_webhook is not None:
                context.check_webhook(webhook_url)
            webhook = {"url": webhook_url}
            if isinstance(body.get("webhook_secret"), str):
                webhook["secret"] = body["webhook_secret"]
            request[WEBHOOK_KEY] = webhook
        request[INPUT_KEY] = {"prompt": prompt}
        size = None
        if isinstance(body.get("width"), int) and isinstance(body.get("height"), int):
            size = f"{body['width']}x{body['height']}"
        output_format = body.get("output_format") or "jpeg"
        if output_format not in ("jpeg", "png"):
            raise InvalidRequestError("output_format: must be 'jpeg' or 'png'.", param="output_format")
        return GenerationRequest(
            operation="edit" if images else "generate",
            model=request.match_info["model"],
            prompt=prompt,
            size=size,
            output_format=output_format,
            response_format="url",
            images=images,
            extra={key: value for key, value in body.items() if key not in _KNOWN},
        )

    def render_result(self, exchange: Exchange, request: web.Request) -> web.Response:
        raise AssertionError("BFL routes are asynchronous jobs")  # never called: jobs render with render_job

    def links_sidecars(self, request: web.Request) -> bool:
        return False  # sidecars are named by the image items or served beside the assets

    def render_error(self, error: ImagegateError) -> web.Response:
        if isinstance(error, UpstreamStatusError):
            return web.Response(body=error.body, status=error.status, content_type=error.content_type.split(";")[0] or "application/json")
        status = 422 if error.status == 400 and error.code != "content_policy_violation" else error.status
        return web.Response(body=json.dumps({"detail": error.message}), status=status, content_type="application/json", headers=error.headers)

    # -- jobs ------------------------------------------------------------------------------------

    def job_id(self, request: web.Request) -> str:
        return request.query.get("id", "")

    def render_submitted(self, job: JobRecord, request: web.Request) -> web.Response:
        return web.json_response({"id": job.id, "polling_url": f"{job.base_url}{PREFIX}/v1/get_result?id={job.id}"})

    def _body(self, job: JobRecord, urls: list[str]) -> dict[str, Any]:
        if job.status == "pending":
            return {"id": job.id, "status": "Pending", "result": None, "progress": None}
        if job.status == "succeeded" and urls:
            result = {"sample": urls[0], "prompt": job.input.get("prompt"), "seed": job.metadata.get("seed"),
                      "start_time": job.created_at, "end_time": job.completed_at,
                      "duration": round((job.completed_at or job.created_at) - job.created_at, 3)}
            return {"id": job.id, "status": "Ready", "result": result, "progress": None}
        error = job.error or {}
        status = "Content Moderated" if error.get("code") == "content_policy_violation" else "Error"
        return {"id": job.id, "status": status, "result": None, "progress": None, "details": {"message": error.get("message")}}

    def render_job(self, job: JobRecord, request: web.Request, urls: list[str]) -> web.Response:
        return web.json_response(self._body(job, urls))

    def webhook_body(self, job: JobRecord, urls: list[str]) -> dict[str, Any]:
        return self._body(job, urls)
