"""Replicate's predictions API as an upstream: create (waiting with `Prefer: wait`), poll, fetch outputs.

Documented at https://replicate.com/docs/reference/http: `POST /v1/models/{owner}/{name}/predictions`
with `{"input": {...}}` and `Authorization: Bearer`, `Prefer: wait=N` holding the answer up to N
seconds; a prediction is `{"id", "model", "version", "input", "output", "error", "status", "urls",
"metrics", ...}` with status `starting`, `processing`, `succeeded`, `failed` or `canceled`;
`GET /v1/predictions/{id}` polls it. Image models answer with URLs on `replicate.delivery`, fetched by
`ImageFetcher` (host allow-list, public addresses only, size and time caps). Model ids are Replicate's
`owner/name`. The cost hint carries the image count and the reported `predict_time`.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from ..errors import UpstreamBadResponseError, UpstreamError, UpstreamTimeoutError
from ..exchange import GeneratedImage, GenerationRequest, GenerationResult
from .base import Provider
from .http import JobProviderHTTP, cost_hint

TERMINAL = {"succeeded", "failed", "canceled", "aborted"}


class ReplicateUpstream(JobProviderHTTP, Provider):
    def __init__(self, name: str, *, wait_s: int = 60, **options: Any) -> None:
        super().__init__(name, **options)
        #: Seconds to ask Replicate to hold the create call open (`Prefer: wait`).
        self.wait_s = wait_s

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}

    def body(self, request: GenerationRequest) -> dict[str, Any]:
        model_input: dict[str, Any] = {"prompt": request.prompt}
        if request.negative_prompt:
            model_input["negative_prompt"] = request.negative_prompt
        if request.n > 1:
            model_input["num_outputs"] = request.n
        model_input.update(request.extra.get("input", {}) if isinstance(request.extra.get("input"), dict) else {})
        model_input.update({key: value for key, value in request.extra.items() if key != "input"})
        return {"input": model_input}

    @staticmethod
    def _json(raw: bytes) -> dict[str, Any]:
        try:
            payload = json.loads(raw)
        except ValueError as exc:
            raise UpstreamBadResponseError("Replicate answered with invalid JSON.") from exc
        if not isinstance(payload, dict):
            raise UpstreamBadResponseError("Replicate answered with something other than a prediction.")
        return payload

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        started = time.perf_counter()
        if ":" in request.model:
            url, body = f"{self.base_url}/v1/predictions", {**self.body(request), "version": request.model}
        else:
            url, body = f"{self.base_url}/v1/models/{request.model}/predictions", self.body(request)
        headers = {**self._headers(), "Prefer": f"wait={self.wait_s}"}
        _, _, raw = await self.call("POST", url, json=body, headers=headers)
        prediction = self._json(raw)
        deadline = time.monotonic() + self.total_timeout_s
        while prediction.get("status") not in TERMINAL:
            if time.monotonic() > deadline:
                raise UpstreamTimeoutError(f"Replicate did not finish the prediction in {self.total_timeout_s:.0f} s.")
            await asyncio.sleep(self.poll_interval_s)
            prediction_id = str(prediction.get("id") or "")
            if not prediction_id.replace("-", "").isalnum():
                raise UpstreamBadResponseError("Replicate answered without a usable prediction id.")
            _, _, raw = await self.call("GET", f"{self.base_url}/v1/predictions/{prediction_id}", headers=self._headers())
            prediction = self._json(raw)
        if prediction["status"] != "succeeded":
            raise UpstreamError(f"The Replicate prediction {prediction['status']}: {str(prediction.get('error') or '')[:300]}")
        output = prediction.get("output")
        urls = [output] if isinstance(output, str) else [item for item in output or [] if isinstance(item, str)]
        if not urls:
            raise UpstreamBadResponseError("The Replicate prediction succeeded without image URLs in its output.")
        fetched = await asyncio.gather(*(self.fetcher.fetch_image(url) for url in urls))
        images = [GeneratedImage(data=data, media_type=media_type) for data, media_type in fetched]
        metrics = prediction.get("metrics") if isinstance(prediction.get("metrics"), dict) else {}
        return GenerationResult(
            provider=self.name,
            model=request.model,
            images=images,
            metadata={
                "upstream_id": prediction.get("id"),
                "seed": (prediction.get("input") or {}).get("seed") if isinstance(prediction.get("input"), dict) else None,
                "cost_hint": cost_hint(images=len(images), predict_time_s=metrics.get("predict_time")),
            },
            upstream_latency_s=time.perf_counter() - started,
        )
