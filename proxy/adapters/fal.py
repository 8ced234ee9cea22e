"""fal's queue API as an upstream: submit, poll the status, read the result, fetch the images.

Documented at https://docs.fal.ai/model-endpoints/queue and https://fal.ai/docs/api-reference/inference-api:
`POST https://queue.fal.run/{model_id}` (`fal-ai/flux/dev`, `fal-ai/flux/schnell`,
`fal-ai/flux-pro/v1.1`, `fal-ai/stable-diffusion-v35-large`...) with the model's JSON input and
`Authorization: Key <key>` answers `{"request_id", "status_url", "response_url", "cancel_url"}`;
`GET status_url` answers `{"status": "IN_QUEUE" | "IN_PROGRESS" | "COMPLETED", ...}` (202 until
completed, then 200); `GET response_url` answers the model's output, for image models
`{"images": [{"url", "width", "height", "content_type"}], "seed", "has_nsfw_concepts", "timings",
"prompt"}`, or the model's error (`{"detail": [{"loc", "msg", "type"}]}`, type
`content_policy_violation` when fal's own checker refused the request).

The status and response URLs are followed only on the API's own host or fal's (`*.fal.run`);
otherwise they are rebuilt from the base URL, as fal's docs describe them (owner and app only, never
the model's sub-path). Images are URLs on fal's CDN (`fal.media`, `v3.fal.media`), fetched by
`ImageFetcher` (host allow-list, public addresses only, size and time caps); a `data:` URI (fal's
`sync_mode`) is decoded in place. The cost hint is the output megapixels: fal prices FLUX per megapixel.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from typing import Any

from yarl import URL

from ..errors import ContentPolicyError, UpstreamBadResponseError, UpstreamError, UpstreamStatusError, UpstreamTimeoutError
from ..exchange import GeneratedImage, GenerationRequest, GenerationResult, InputImage, sniff_media_type
from .base import Provider
from .http import JobProviderHTTP, cost_hint, host_allowed

#: fal's named sizes (`image_size`), as its FLUX and Stable Diffusion model pages list them.
IMAGE_SIZES = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}
PRESETS = {size: name for name, size in IMAGE_SIZES.items()}
#: Apps whose ids carry a namespace before the owner (`workflows/owner/app`), as fal's clients know them.
NAMESPACES = ("workflows", "comfy")
PENDING = {"IN_QUEUE", "IN_PROGRESS"}
FAL_HOSTS = {"*.fal.run"}


def app_id(model: str) -> str:
    """The owner and app of a model id, what fal's status and result URLs use (`fal-ai/flux/dev` -> `fal-ai/flux`)."""
    parts = model.strip("/").split("/")
    keep = 3 if parts[0] in NAMESPACES else 2
    return "/".join(parts[:keep])


def data_uri(image: InputImage) -> str:
    return f"data:{image.media_type};base64," + base64.b64encode(image.data).decode("ascii")


def decode_data_uri(uri: str) -> bytes | None:
    """The bytes of a base64 `data:` URI, or None when `uri` is not one."""
    header, comma, payload = uri.partition(",")
    if not comma or not header.startswith("data:") or not header.endswith(";base64"):
        return None
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        return None


def size_of(request: GenerationRequest) -> tuple[int, int] | None:
    if request.size and "x" in request.size:
        width, _, height = request.size.partition("x")
        if width.isdigit() and height.isdigit():
            return int(width), int(height)
    return None


class FalUpstream(JobProviderHTTP, Provider):
    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Key {self._api_key}"
        return headers

    def body(self, request: GenerationRequest) -> dict[str, Any]:
        """The model input: the normalised fields in fal's names, then the client's own fields."""
        body: dict[str, Any] = {"prompt": request.prompt}
        if request.negative_prompt:
            body["negative_prompt"] = request.negative_prompt
        if request.n > 1:
            body["num_images"] = request.n
        size = size_of(request)
        if size is not None:  # a preset's own name where the size is one (what fal documents)
            body["image_size"] = PRESETS.get(size) or {"width": size[0], "height": size[1]}
        if request.output_format in ("jpeg", "png"):
            body["output_format"] = request.output_format
        if len(request.images) == 1:
            body["image_url"] = data_uri(request.images[0])
        elif request.images:
            body["image_urls"] = [data_uri(image) for image in request.images]
        if request.mask is not None:
            body["mask_url"] = data_uri(request.mask)
        body.update({key: value for key, value in request.extra.items() if key not in body})
        return body

    def _followed(self, url: Any, fallback: str) -> str:
        """`url` when it is on the API's own host or fal's, else the URL fal's docs describe."""
        if isinstance(url, str):
            parsed, base = URL(url), URL(self.base_url)
            if parsed.scheme in ("https", base.scheme) and (parsed.host == base.host or host_allowed(parsed.host or "", FAL_HOSTS)):
                return url
        return fallback

    @staticmethod
    def _json(raw: bytes, what: str) -> dict[str, Any]:
        try:
            payload = json.loads(raw)
        except ValueError as exc:
            raise UpstreamBadResponseError(f"fal answered the {what} with invalid JSON.") from exc
        if not isinstance(payload, dict):
            raise UpstreamBadResponseError(f"fal answered the {what} with something other than an object.")
        return payload

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        started = time.perf_counter()
        submitted = await self._submit(request)
        result = await self._wait(request.model, submitted)
        images, sizes = await self._images(result)
        width, height = sizes[0] if sizes else (size_of(request) or (None, None))
        metadata: dict[str, Any] = {
            "upstream_id": submitted.get("request_id"),
            "seed": result.get("seed"),
            "has_nsfw_concepts": result.get("has_nsfw_concepts"),
            "cost_hint": cost_hint(images=len(images), width=width, height=height, input_images=len(request.images) or None),
        }
        if width and height:
            metadata["size"] = f"{width}x{height}"  # read by the price table (per-megapixel models)
        return GenerationResult(
            provider=self.name, model=request.model, images=images, metadata=metadata,
            upstream_latency_s=time.perf_counter() - started,
        )

    async def _submit(self, request: GenerationRequest) -> dict[str, Any]:
        _, _, raw = await self.call("POST", f"{self.base_url}/{request.model.strip('/')}", json=self.body(request), headers=self._headers())
        submitted = self._json(raw, "submit")
        request_id = str(submitted.get("request_id") or "")
        if not request_id.replace("-", "").isalnum():
            raise UpstreamBadResponseError("fal answered the submit without a usable `request_id`.")
        return submitted

    async def _wait(self, model: str, submitted: dict[str, Any]) -> dict[str, Any]:
        """Poll the status until COMPLETED, then read the result (the model's error raised as ours)."""
        base = f"{self.base_url}/{app_id(model)}/requests/{submitted['request_id']}"
        status_url = self._followed(submitted.get("status_url"), base + "/status")
        response_url = self._followed(submitted.get("response_url"), base)
        deadline = time.monotonic() + self.total_timeout_s
        while True:
            _, _, raw = await self.call("GET", status_url, headers=self._headers())
            status = self._json(raw, "status poll").get("status")
            if status == "COMPLETED":
                break
            if status not in PENDING:
                raise UpstreamError(f"fal reported the request as {str(status)[:40]!r}.")
            if time.monotonic() > deadline:
                raise UpstreamTimeoutError(f"fal did not finish the request in {self.total_timeout_s:.0f} s.")
            await asyncio.sleep(self.poll_interval_s)
        try:
            _, _, raw = await self.call("GET", response_url, headers=self._headers())
        except UpstreamStatusError as exc:
            if _is_content_policy(exc.body):
                raise ContentPolicyError("The provider's own moderation refused this request.") from exc
            raise
        return self._json(raw, "result")

    async def _images(self, result: dict[str, Any]) -> tuple[list[GeneratedImage], list[tuple[int, int]]]:
        listed = result.get("images")
        if not isinstance(listed, list) and isinstance(result.get("image"), dict):
            listed = [result["image"]]  # single-image models answer `image`
        entries = [item for item in listed or [] if isinstance(item, dict) and isinstance(item.get("url"), str)]
        if not entries:
            raise UpstreamBadResponseError("fal's result has no `images` with a `url`.")
        fetched = await asyncio.gather(*(self._image(entry["url"]) for entry in entries))
        images = [GeneratedImage(data=data, media_type=media_type) for data, media_type in fetched]
        sizes = [
            (int(entry["width"]), int(entry["height"]))
            for entry in entries
            if isinstance(entry.get("width"), int) and isinstance(entry.get("height"), int)
        ]
        return images, sizes

    async def _image(self, url: str) -> tuple[bytes, str]:
        if url.startswith("data:"):
            data = decode_data_uri(url)
            media_type = sniff_media_type(data) if data is not None else None
            if data is None or media_type is None:
                raise UpstreamBadResponseError("fal returned a data URI that is not a base64 PNG, JPEG or WebP image.")
            return data, media_type
        return await self.fetcher.fetch_image(url)


def _is_content_policy(body: bytes) -> bool:
    """Whether fal's error body says its own checker refused the input or output."""
    try:
        payload = json.loads(body)
    except ValueError:
        return False
    detail = payload.get("detail") if isinstance(payload, dict) else None
    if isinstance(detail, list):
        return any(isinstance(item, dict) and item.get("type") == "content_policy_violation" for item in detail)
    return False
