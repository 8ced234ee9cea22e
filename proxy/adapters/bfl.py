"""Black Forest Labs' FLUX API as an upstream: submit, poll, fetch the signed result URL.

Documented at https://docs.bfl.ai/quick_start/generating_images and
https://docs.bfl.ai/api_integration/integration_guidelines: `POST /v1/{model}` (`flux-dev`,
`flux-pro-1.1`, `flux-pro-1.1-ultra`, `flux-kontext-pro`, `flux-2-pro`...) with a JSON body
(`prompt`, `width`/`height` or `aspect_ratio`, `seed`, `output_format`, `safety_tolerance`,
`input_image` for edits) and the key in `x-key`, answers `{"id", "polling_url"}`; `GET polling_url`
(or `/v1/get_result?id=`) answers `{"id", "status", "result"}` with status `Pending`, `Ready`
(`result.sample` is a signed URL, valid about ten minutes), `Request Moderated`, `Content Moderated`,
`Error` or `Task not found`.

The polling URL is followed only on the API's own host or an allowed host; the sample is fetched by
`ImageFetcher` (host allow-list, public addresses only, size and time caps). The cost hint is the
output megapixels (FLUX.2 is priced per megapixel).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

from yarl import URL

from ..errors import ContentPolicyError, UpstreamBadResponseError, UpstreamError, UpstreamTimeoutError
from ..exchange import GeneratedImage, GenerationRequest, GenerationResult
from .base import Provider
from .http import JobProviderHTTP, cost_hint, host_allowed

DEFAULT_SIZE = (1024, 768)
PENDING = {"Pending", "Processing", "Queued"}


def parse_size(size: str | None) -> tuple[int, int] | None:
    if not size or "x" not in size:
        return None
    width, _, height = size.partition("x")
    return (int(width), int(height)) if width.isdigit() and height.isdigit() else None


class BFLUpstream(JobProviderHTTP, Provider):
    def _headers(self) -> dict[str, str]:
        headers = {"accept": "application/json"}
        if self._api_key:
            headers["x-key"] = self._api_key
        return headers

    def body(self, request: GenerationRequest) -> dict[str, Any]:
        body: dict[str, Any] = {"prompt": request.prompt, "output_format": request.output_format if request.output_format != "webp" else "png"}
        size = parse_size(request.size)
        if size is not None:
            body["width"], body["height"] = size
        if request.images:
            body["input_image"] = base64.b64encode(request.images[0].data).decode("ascii")
        if request.mask is not None:
            body["mask"] = base64.b64encode(request.mask.data).decode("ascii")
        body.update({key: value for key, value in request.extra.items() if key not in ("webhook_url", "webhook_secret")})
        return body

    def _polling_url(self, submitted: dict[str, Any]) -> str:
        job_id = str(submitted.get("id") or "")
        polling_url = submitted.get("polling_url")
        if isinstance(polling_url, str):
            parsed, base = URL(polling_url), URL(self.base_url)
            if parsed.scheme in ("https", base.scheme) and (parsed.host == base.host or host_allowed(parsed.host or "", {"*.bfl.ai"})):
                return polling_url
        if not job_id:
            raise UpstreamBadResponseError("BFL answered the submit without an `id` or a usable `polling_url`.")
        return str(URL(self.base_url + "/v1/get_result").with_query(id=job_id))

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        started = time.perf_counter()
        images: list[GeneratedImage] = []
        metadata: dict[str, Any] = {}
        credits: float | None = None
        for _ in range(request.n):  # one image per task
            image, metadata = await self._one(request)
            images.append(image)
            charged = metadata.pop("credits", None)
            if charged is not None:
                credits = (credits or 0.0) + charged
        width, height = parse_size(request.size) or (
            (int(request.extra["width"]), int(request.extra["height"])) if "width" in request.extra and "height" in request.extra else DEFAULT_SIZE
        )
        # `credits`: what BFL itself says each task costs (the submit's `cost`, 1 credit = $0.01).
        metadata["cost_hint"] = cost_hint(
            images=len(images), width=width, height=height, input_images=len(request.images) or None, credits=credits
        )
        metadata["output_format"] = request.output_format
        metadata["size"] = f"{width}x{height}"  # read by the price table (per-megapixel models)
        return GenerationResult(
            provider=self.name, model=request.model, images=images, metadata=metadata,
            upstream_latency_s=time.perf_counter() - started,
        )

    async def _one(self, request: GenerationRequest) -> tuple[GeneratedImage, dict[str, Any]]:
        _, _, raw = await self.call("POST", f"{self.base_url}/v1/{request.model}", json=self.body(request), headers=self._headers())
        try:
            submitted = json.loads(raw)
        except ValueError as exc:
            raise UpstreamBadResponseError("BFL answered the submit with invalid JSON.") from exc
        if not isinstance(submitted, dict):
            raise UpstreamBadResponseError("BFL answered the submit with something other than an object.")
        polling_url = self._polling_url(submitted)
        deadline = time.monotonic() + self.total_timeout_s
        while True:
            _, _, raw = await self.call("GET", polling_url, headers=self._headers())
            try:
                state = json.loads(raw)
            except ValueError as exc:
                raise UpstreamBadResponseError("BFL answered a poll with invalid JSON.") from exc
            status = state.get("status")
            if status == "Ready":
                break
            if status in ("Request Moderated", "Content Moderated"):
                raise ContentPolicyError(
                    f"The provider's own moderation refused this request ({status}).",
                    code="content_policy_violation",
                )
            if status not in PENDING:
                raise UpstreamError(f"BFL reported the task as {str(status)[:40]!r}.")
            if time.monotonic() > deadline:
                raise UpstreamTimeoutError(f"BFL did not finish the task in {self.total_timeout_s:.0f} s.")
            await asyncio.sleep(self.poll_interval_s)
        result = state.get("result") or {}
        sample = result.get("sample") if isinstance(result, dict) else None
        if not isinstance(sample, str):
            raise UpstreamBadResponseError("BFL reported the task Ready without a `result.sample` URL.")
        data, media_type = await self.fetcher.fetch_image(sample)
        cost = submitted.get("cost")
        credits = float(cost) if isinstance(cost, (int, float)) and not isinstance(cost, bool) and cost >= 0 else None
        return GeneratedImage(data=data, media_type=media_type), {"seed": result.get("seed"), "upstream_id": submitted.get("id"), "credits": credits}
