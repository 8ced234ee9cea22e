"""Google's Gemini API as an upstream: Imagen through `:predict`, Gemini image models through
`:generateContent`.

Documented at https://ai.google.dev/gemini-api/docs/imagen and
https://ai.google.dev/gemini-api/docs/image-generation, key in `x-goog-api-key`:

- `POST /v1beta/models/{imagen model}:predict` with `{"instances": [{"prompt"}], "parameters":
  {"sampleCount", "aspectRatio", "personGeneration", ...}}` answers `{"predictions":
  [{"bytesBase64Encoded", "mimeType"}]}`; an image Google's own filter removed is left out, or comes
  back as `{"raiFilteredReason"}` only.
- `POST /v1beta/models/{gemini model}:generateContent` with `{"contents": [{"role", "parts": [{"text"},
  {"inlineData": {"mimeType", "data"}}]}], "generationConfig": {...}}` answers `{"candidates":
  [{"content": {"parts": [{"text"}, {"inlineData"}]}, "finishReason"}], "usageMetadata"}`; a prompt
  Google refuses answers `{"promptFeedback": {"blockReason"}}` and no candidates.

Models whose id starts with `imagen` go to `:predict`, every other one to `:generateContent`. Gemini
makes one image per call, so a request for n images makes n calls. Edits send the input images as
inline data after the prompt. Images come back as base64 bytes: nothing is fetched. Errors
(`{"error": {"code", "message", "status"}}`) come back as `UpstreamStatusError`, passed to a Google
client unchanged. Google's own refusals become `ContentPolicyError`. The cost hint is the image count
(Imagen and Gemini image output are priced per image).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from typing import Any

from ..errors import ContentPolicyError, UpstreamBadResponseError
from ..exchange import GeneratedImage, GenerationRequest, GenerationResult, sniff_media_type
from .base import Provider
from .http import ProviderHTTP, cost_hint

API_VERSION = "v1beta"
#: Imagen's aspect ratios (https://ai.google.dev/gemini-api/docs/imagen#imagen-configuration) by the
#: `WxH` size imagegate normalises them to, so a request from any surface can name one.
ASPECT_RATIOS = {"1024x1024": "1:1", "896x1280": "3:4", "1280x896": "4:3", "768x1408": "9:16", "1408x768": "16:9"}
#: Finish reasons Google gives when its own safety system stopped the image.
_URLSAFE = str.maketrans("-_", "+/")
SAFETY_FINISH = {"SAFETY", "IMAGE_SAFETY", "PROHIBITED_CONTENT", "BLOCKLIST", "SPII", "IMAGE_PROHIBITED_CONTENT"}


def is_imagen(model: str) -> bool:
    return model.removeprefix("models/").startswith("imagen")


def inline_data(part: dict[str, Any]) -> dict[str, Any] | None:
    """A part's inline data, spelled `inlineData` (REST JSON) or `inline_data` (also accepted by Google)."""
    value = part.get("inlineData", part.get("inline_data"))
    return value if isinstance(value, dict) else None


def b64decode(data: str) -> bytes:
    """Standard or URL-safe base64 (Google's JSON bytes fields accept both; its SDK sends URL-safe)."""
    return base64.b64decode(data.translate(_URLSAFE), validate=True)


def decode_image(data: Any, what: str) -> tuple[bytes, str]:
    try:
        raw = b64decode(data) if isinstance(data, str) else b""
    except (binascii.Error, ValueError) as exc:
        raise UpstreamBadResponseError(f"Google's {what} is not valid base64.") from exc
    media_type = sniff_media_type(raw)
    if media_type is None:
        raise UpstreamBadResponseError(f"Google's {what} is not a PNG, JPEG or WebP image.")
    return raw, media_type


class GoogleUpstream(ProviderHTTP, Provider):
    def __init__(
        self, name: str, *, base_url: str, api_key: str | None, timeout_s: float = 120.0, connect_timeout_s: float = 10.0
    ) -> None:
        super().__init__(name, base_url=base_url, timeout_s=timeout_s, connect_timeout_s=connect_timeout_s)
        self._api_key = api_key

    def _url(self, model: str, method: str) -> str:
        return f"{self.base_url}/{API_VERSION}/models/{model.removeprefix('models/')}:{method}"

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["x-goog-api-key"] = self._api_key
        return headers

    async def _post(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        _, _, raw = await self.call("POST", url, json=body, headers=self._headers())
        try:
            payload = json.loads(raw)
        except ValueError as exc:
            raise UpstreamBadResponseError("Google answered with invalid JSON.") from exc
        if not isinstance(payload, dict):
            raise UpstreamBadResponseError("Google answered with something other than an object.")
        return payload

    # -- Imagen ----------------------------------------------------------------------------------

    def predict_body(self, request: GenerationRequest) -> dict[str, Any]:
        parameters: dict[str, Any] = {"sampleCount": request.n}
        if request.size in ASPECT_RATIOS:
            parameters["aspectRatio"] = ASPECT_RATIOS[request.size]
        if request.negative_prompt:
            parameters["negativePrompt"] = request.negative_prompt
        given = request.extra.get("parameters")
        if isinstance(given, dict):
            parameters.update({key: value for key, value in given.items() if key not in ("sampleCount", "negativePrompt")})
        return {"instances": [{"prompt": request.prompt}], "parameters": parameters}

    async def _predict(self, request: GenerationRequest) -> tuple[list[GeneratedImage], dict[str, Any]]:
        payload = await self._post(self._url(request.model, "predict"), self.predict_body(request))
        predictions = payload.get("predictions")
        entries = [item for item in predictions or [] if isinstance(item, dict)] if isinstance(predictions, list) else []
        images = [
            GeneratedImage(*decode_image(item["bytesBase64Encoded"], "image"))
            for item in entries
            if "bytesBase64Encoded" in item
        ]
        filtered = [str(item["raiFilteredReason"]) for item in entries if "raiFilteredReason" in item]
        if not images:
            if filtered or not entries:
                raise ContentPolicyError("The provider's own moderation refused this request.")
            raise UpstreamBadResponseError("Google's Imagen answer has no images.")
        return images, {"rai_filtered": len(filtered)} if filtered else {}

    # -- Gemini ----------------------------------------------------------------------------------

    def content_body(self, request: GenerationRequest) -> dict[str, Any]:
        parts: list[dict[str, Any]] = [{"text": request.prompt}]
        for image in request.images:
            parts.append({"inlineData": {"mimeType": image.media_type, "data": base64.b64encode(image.data).decode("ascii")}})
        body: dict[str, Any] = {"contents": [{"role": "user", "parts": parts}]}
        config = request.extra.get("generationConfig")
        body["generationConfig"] = dict(config) if isinstance(config, dict) else {}
        body["generationConfig"].setdefault("responseModalities", ["TEXT", "IMAGE"])
        if isinstance(request.extra.get("safetySettings"), list):
            body["safetySettings"] = request.extra["safetySettings"]
        return body

    async def _one_content(self, request: GenerationRequest) -> tuple[list[GeneratedImage], dict[str, Any]]:
        payload = await self._post(self._url(request.model, "generateContent"), self.content_body(request))
        feedback = payload.get("promptFeedback")
        if isinstance(feedback, dict) and feedback.get("blockReason"):
            raise ContentPolicyError(f"The provider's own moderation refused this prompt ({str(feedback['blockReason'])[:40]}).")
        images: list[GeneratedImage] = []
        texts: list[str] = []
        finish: list[str] = []
        for candidate in payload.get("candidates") or []:
            if not isinstance(candidate, dict):
                continue
            finish.append(str(candidate.get("finishReason") or ""))
            for part in (candidate.get("content") or {}).get("parts") or []:
                data = inline_data(part) if isinstance(part, dict) else None
                if data is not None:
                    images.append(GeneratedImage(*decode_image(data.get("data"), "inline image")))
                elif isinstance(part, dict) and isinstance(part.get("text"), str):
                    texts.append(part["text"])
        if not images:
            if any(reason in SAFETY_FINISH for reason in finish):
                raise ContentPolicyError("The provider's own moderation stopped the image.")
            raise UpstreamBadResponseError("Google's answer has no image (the model answered with text only).")
        usage = payload.get("usageMetadata")
        return images, {"text": "\n".join(texts) or None, "finish_reason": finish[0] if finish else None,
                        "usage_metadata": usage if isinstance(usage, dict) else None,
                        "model_version": payload.get("modelVersion")}

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        started = time.perf_counter()
        if is_imagen(request.model):
            images, metadata = await self._predict(request)
        else:
            answers = await asyncio.gather(*(self._one_content(request) for _ in range(request.n)))
            images = [image for found, _ in answers for image in found]
            metadata = answers[0][1]
        metadata = {key: value for key, value in metadata.items() if value is not None}
        metadata["cost_hint"] = cost_hint(images=len(images), input_images=len(request.images) or None)
        return GenerationResult(
            provider=self.name, model=request.model, images=images, metadata=metadata,
            upstream_latency_s=time.perf_counter() - started,
        )
