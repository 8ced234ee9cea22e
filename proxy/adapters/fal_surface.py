"""fal's queue API as clients see it, mounted under `/fal`: submit, poll the status, read the result.

A client replaces `https://queue.fal.run` with `https://imagegate.example/fal/queue` and
`https://fal.run` with `https://imagegate.example/fal/run`, and keeps its code
(https://docs.fal.ai/model-endpoints/queue). With the official `fal-client` that is two environment
variables, read when it is imported: `FAL_QUEUE_RUN_HOST=imagegate.example/fal/queue` and
`FAL_RUN_HOST=imagegate.example/fal/run` (the SDK always speaks https); the imagegate key goes in
`FAL_KEY`, sent as `Authorization: Key <key>`.

- `POST /fal/queue/{model_id}` answers `{"request_id", "status_url", "response_url", "cancel_url"}`,
  every URL imagegate's own.
- `GET /fal/queue/{owner}/{app}/requests/{id}/status` answers `IN_PROGRESS` (202) until the job is
  processed, then `COMPLETED` (200; with `error` and `error_type` when it failed or was withheld).
- `GET /fal/queue/{owner}/{app}/requests/{id}` answers the model's output with every image URL an
  expiring signed URL of imagegate's moderated, signed copy, never fal's CDN; a failed job answers
  fal's error shape; a pending one 400 "still in progress", as fal does.
- `PUT .../requests/{id}/cancel`: a job that reached the provider is never cancelled (it is
  processed and audited as usual); the answer says so.
- `POST /fal/run/{model_id}` is fal's synchronous endpoint: the client waits for the processed result.

Input images (`image_url`, `image_urls`, `mask_url`) are accepted as base64 `data:` URIs only, so
that every one is screened before anything is sent upstream; any other `*_url(s)` or `*prompt*` field
is refused rather than passed on unscreened. A `fal_webhook` query parameter
receives the processed result (`{"request_id", "status", "payload"}`) once, signed the Standard
Webhooks way by imagegate (not with fal's own key), and is never forwarded to fal. Errors use fal's
shapes: `{"detail": [{"loc", "msg", "type"}]}` for invalid input and moderation (422, type
`content_policy_violation`), `{"detail": "..."}` for keys, limits and missing jobs.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from ..errors import ImagegateError, InvalidRequestError, UpstreamStatusError
from ..exchange import Exchange, GenerationRequest, InputImage, sniff_media_type
from ..jobs import INPUT_KEY, WEBHOOK_KEY, JobRecord, error_from_dict
from .fal import IMAGE_SIZES, app_id, decode_data_uri
from .surface import ParseContext, SurfaceRoute, load_json_object, read_limited

PREFIX = "/fal"
QUEUE = f"{PREFIX}/queue"
_MODEL = "{model:[A-Za-z0-9._-]+(?:/[A-Za-z0-9._-]+)+}"
_APP = "{app:[A-Za-z0-9._-]+(?:/[A-Za-z0-9._-]+)+}"
_IMAGE_FIELDS = ("image_url", "image_urls", "mask_url")
_KNOWN = {"prompt", "negative_prompt", "num_images", "image_size", "output_format", *_IMAGE_FIELDS}


def fal_key(request: web.Request) -> str | None:
    """The key from `Authorization: Key <key>` (fal's scheme); `Bearer` is accepted too."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() in ("key", "bearer") else None


def parse_size(value: Any) -> str | None:
    """fal's `image_size`, a preset name or `{"width", "height"}`, as imagegate's `WxH`."""
    if isinstance(value, str):
        if value not in IMAGE_SIZES:
            raise InvalidRequestError(f"image_size: must be one of {', '.join(IMAGE_SIZES)} or an object with width and height.", param="image_size")
        width, height = IMAGE_SIZES[value]
        return f"{width}x{height}"
    if isinstance(value, dict):
        width, height = value.get("width"), value.get("height")
        if not (isinstance(width, int) and isinstance(height, int) and 64 <= width <= 14142 and 64 <= height <= 14142):
            raise InvalidRequestError("image_size: width and height must be integers between 64 and 14142.", param="image_size")
        return f"{width}x{height}"
    if value is None:
        return None
    raise InvalidRequestError("image_size: must be a preset name or an object with width and height.", param="image_size")


def input_image(value: Any, field: str) -> InputImage:
    """One input image, from a base64 `data:` URI only: a remote URL could not be screened first."""
    data = decode_data_uri(value) if isinstance(value, str) else None
    if data is None:
        raise InvalidRequestError(
            f"{field}: imagegate accepts input images as base64 data URIs only (data:image/png;base64,...), "
            "so that each is screened before it is sent.", param=field,
        )
    media_type = sniff_media_type(data)
    if media_type is None:
        raise InvalidRequestError(f"{field}: not a PNG, JPEG or WebP image.", param=field)
    return InputImage(data, media_type, field, "mask" if field == "mask_url" else "image")


class FalSurface:
    name = "fal"

    def routes(self) -> list[SurfaceRoute]:
        return [
            SurfaceRoute("GET", f"{QUEUE}/{_APP}/requests/{{id}}/status", "poll"),
            SurfaceRoute("GET", f"{QUEUE}/{_APP}/requests/{{id}}", "poll"),
            SurfaceRoute("PUT", f"{QUEUE}/{_APP}/requests/{{id}}/cancel", "custom", handler=self.cancel),
            SurfaceRoute("POST", f"{QUEUE}/{_MODEL}", "submit"),
            SurfaceRoute("POST", f"{PREFIX}/run/{_MODEL}", "generate"),
        ]

    def credential(self, request: web.Request) -> str | None:
        return fal_key(request)

    async def parse(self, request: web.Request, route: SurfaceRoute, context: ParseContext) -> GenerationRequest:
        body = load_json_object(await read_limited(request, context.max_body_bytes))
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise InvalidRequestError("prompt: field required", param="prompt", code="missing_required_parameter")
        negative = body.get("negative_prompt")
        if negative is not None and not isinstance(negative, str):
            raise InvalidRequestError("negative_prompt: must be a string.", param="negative_prompt")
        images = self._images(body)
        mask = input_image(body["mask_url"], "mask_url") if body.get("mask_url") is not None else None
        n = body.get("num_images", 1)
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 4:
            raise InvalidRequestError("num_images: must be an integer from 1 to 4.", param="num_images")
        output_format = body.get("output_format") or "jpeg"
        if output_format not in ("jpeg", "png"):
            raise InvalidRequestError("output_format: must be 'jpeg' or 'png'.", param="output_format")
        self._refuse_unscreened(body)
        self._webhook(request, context)
        request[INPUT_KEY] = {"prompt": prompt}
        return GenerationRequest(
            operation="edit" if images else "generate",
            model=request.match_info["model"],
            prompt=prompt,
            negative_prompt=negative or None,
            n=n,
            size=parse_size(body.get("image_size")),
            output_format=output_format,
            response_format="url",
            images=images,
            mask=mask,
            extra={key: value for key, value in body.items() if key not in _KNOWN},
        )

    @staticmethod
    def _images(body: dict[str, Any]) -> list[InputImage]:
        images: list[InputImage] = []
        if body.get("image_url") is not None:
            images.append(input_image(body["image_url"], "image_url"))
        listed = body.get("image_urls")
        if listed is not None:
            if not isinstance(listed, list) or len(listed) > 16:
                raise InvalidRequestError("image_urls: must be a list of at most 16 data URIs.", param="image_urls")
            images.extend(input_image(value, "image_urls") for value in listed)
        return images

    @staticmethod
    def _refuse_unscreened(body: dict[str, Any]) -> None:
        """Other fields that would carry an image (`control_image_url`...) or a prompt to the model:
        refused, since imagegate would pass them on without screening them."""
        for key in body:
            if key in _KNOWN:
                continue
            if key.endswith(("_url", "_urls")) or "prompt" in key:
                raise InvalidRequestError(
                    f"{key}: imagegate does not pass this field on, since it could not screen it "
                    "(images go in image_url, image_urls or mask_url; text in prompt or negative_prompt).",
                    param=key,
                )

    @staticmethod
    def _webhook(request: web.Request, context: ParseContext) -> None:
        url = request.query.get("fal_webhook")
        if url:
            if context.check_webhook is not None:
                context.check_webhook(url)
            request[WEBHOOK_KEY] = {"url": url}

    # -- answers ---------------------------------------------------------------------------------

    @staticmethod
    def _output(images: list[dict[str, Any]], seed: Any, prompt: Any, seconds: float | None) -> dict[str, Any]:
        return {
            "images": images,
            "timings": {"inference": round(seconds, 3)} if seconds is not None else {},
            "seed": seed,
            "has_nsfw_concepts": [False] * len(images),  # withheld images are never listed
            "prompt": prompt,
        }

    def render_result(self, exchange: Exchange, request: web.Request) -> web.Response:
        result, asked = exchange.result, exchange.request
        assert result is not None and asked is not None
        width, height = _dimensions(result.metadata.get("size"))
        images = [
            {"url": image.asset_url, "width": width, "height": height, "content_type": image.media_type}
            for image in result.images
            if not image.withheld
        ]
        body = self._output(images, result.metadata.get("seed"), asked.prompt, result.upstream_latency_s)
        return web.json_response(body, headers={"x-fal-request-id": exchange.request_id})

    def links_sidecars(self, request: web.Request) -> bool:
        return False  # sidecars are named by the image items or served beside the assets

    def render_error(self, error: ImagegateError) -> web.Response:
        if isinstance(error, UpstreamStatusError):
            return web.Response(body=error.body, status=error.status, content_type=error.content_type.split(";")[0] or "application/json")
        status = error.status
        detail: Any = error.message
        if status in (400, 422):
            status = 422
            location = ["body", error.param] if error.param else ["body"]
            detail = [{"loc": location, "msg": error.message, "type": error.code}]
        headers = {**error.headers, "X-Fal-Error-Type": error.code}
        return web.Response(body=json.dumps({"detail": detail}), status=status, content_type="application/json", headers=headers)

    # -- jobs ------------------------------------------------------------------------------------

    def job_id(self, request: web.Request) -> str:
        return request.match_info["id"]

    def _urls(self, job: JobRecord) -> dict[str, str]:
        base = f"{job.base_url}{QUEUE}/{app_id(job.model or '')}/requests/{job.id}"
        return {"response_url": base, "status_url": f"{base}/status", "cancel_url": f"{base}/cancel"}

    def render_submitted(self, job: JobRecord, request: web.Request) -> web.Response:
        body = {"status": "IN_QUEUE", "request_id": job.id, **self._urls(job), "queue_position": 0}
        return web.json_response(body)

    def _status(self, job: JobRecord) -> tuple[int, dict[str, Any]]:
        body: dict[str, Any] = {"request_id": job.id, **self._urls(job), "logs": []}
        if job.status == "pending":
            return 202, {"status": "IN_PROGRESS", **body}
        body.update(status="COMPLETED", metrics=_metrics(job))
        if job.status == "failed":
            error = job.error or {}
            body.update(error=error.get("message"), error_type=error.get("code"))
        return 200, body

    def _result(self, job: JobRecord, urls: list[str]) -> web.Response:
        if job.status == "pending":
            return web.json_response({"detail": "Request is still in progress"}, status=400)
        if job.status == "failed":
            return self.render_error(error_from_dict(job.error or {}))
        return web.json_response(self._payload(job, urls))

    def _payload(self, job: JobRecord, urls: list[str]) -> dict[str, Any]:
        width, height = _dimensions(job.metadata.get("size"))
        images = [
            {"url": url, "width": width, "height": height, "content_type": asset["media_type"]}
            for url, asset in zip(urls, job.assets)
        ]
        seconds = (job.completed_at - job.created_at) if job.completed_at else None
        return self._output(images, job.metadata.get("seed"), job.input.get("prompt"), seconds)

    def render_job(self, job: JobRecord, request: web.Request, urls: list[str]) -> web.Response:
        if request.path.endswith("/status"):
            status, body = self._status(job)
            return web.json_response(body, status=status)
        return self._result(job, urls)

    def webhook_body(self, job: JobRecord, urls: list[str]) -> dict[str, Any]:
        """What fal delivers to `fal_webhook`: `status` OK with the output, or ERROR with the error."""
        body: dict[str, Any] = {"request_id": job.id, "gateway_request_id": job.id}
        if job.status == "succeeded":
            return {**body, "status": "OK", "payload": self._payload(job, urls)}
        error = job.error or {}
        detail = [{"loc": ["body"], "msg": error.get("message"), "type": error.get("code")}]
        return {**body, "status": "ERROR", "error": error.get("message"), "payload": {"detail": detail}}

    async def cancel(self, request: web.Request) -> web.Response:
        """A job that reached the provider runs to the end (moderated, audited); never cancelled."""
        from ..app import GATEWAY

        gateway = request.app[GATEWAY]
        caller = gateway.authenticate.identify(self.credential(request))
        assert gateway.jobs is not None
        job = await gateway.jobs.store.get(self.job_id(request))
        if job is None or job.tenant != caller.tenant:
            raise ImagegateError("No request with this id exists for this key.", status=404, code="not_found")
        if job.status != "pending":
            return web.json_response({"status": "ALREADY_COMPLETED"}, status=400)
        return web.json_response(
            {"status": "IN_PROGRESS", "detail": "The request has reached the provider; imagegate processes and audits it to the end."},
            status=400,
        )


def _dimensions(size: Any) -> tuple[int | None, int | None]:
    if isinstance(size, str) and "x" in size:
        width, _, height = size.partition("x")
        if width.isdigit() and height.isdigit():
            return int(width), int(height)
    return None, None


def _metrics(job: JobRecord) -> dict[str, float]:
    return {"inference_time": round(job.completed_at - job.created_at, 3)} if job.completed_at else {}
