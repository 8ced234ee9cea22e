"""Stability AI's v2beta Stable Image API as an upstream.

Documented at https://platform.stability.ai/docs/api-reference: `POST /v2beta/stable-image/generate/
{ultra,core,sd3}` and `POST /v2beta/stable-image/edit/{inpaint,outpaint,erase,search-and-replace,
search-and-recolor,remove-background}`, each a multipart form (`prompt`, `negative_prompt`,
`aspect_ratio`, `seed`, `output_format`, `model` for sd3, `image`/`mask` files for edits),
authenticated with `Authorization: Bearer`. imagegate always asks for `Accept: application/json`
(`{"image": base64, "finish_reason", "seed"}`), so every image is seen as bytes before release. One
image per call: a request for n images makes n calls. Errors (`{"id", "name", "errors"}`) come back
as `UpstreamStatusError`, passed to a Stability client unchanged.

Model ids (what a provider lists under `models`): `stable-image-ultra`, `stable-image-core`, the sd3
family by its own name (`sd3.5-large`, `sd3.5-large-turbo`, `sd3.5-medium`, `sd3.5-flash`...), and
`stability-{operation}` for the edit endpoints (`stability-inpaint`, `stability-erase`...).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from typing import Any

import aiohttp

from ..errors import InvalidRequestError, UpstreamBadResponseError
from ..exchange import GeneratedImage, GenerationRequest, GenerationResult, sniff_media_type
from .base import Provider
from .http import ProviderHTTP, cost_hint

GENERATE_MODELS = {"stable-image-ultra": "ultra", "stable-image-core": "core"}
EDIT_OPERATIONS = ("inpaint", "outpaint", "erase", "search-and-replace", "search-and-recolor", "remove-background")
#: List prices in credits per image (1 credit = $0.01), for the cost hint.
CREDITS = {
    "stable-image-ultra": 8, "stable-image-core": 3, "sd3.5-large": 6.5, "sd3.5-large-turbo": 4,
    "sd3.5-medium": 3.5, "sd3.5-flash": 2.5, "stability-inpaint": 3, "stability-outpaint": 4,
    "stability-erase": 3, "stability-search-and-replace": 4, "stability-search-and-recolor": 5,
    "stability-remove-background": 2,
}


def endpoint(model: str) -> tuple[str, dict[str, str]]:
    """The API path for a model id and the form fields that path needs."""
    if model in GENERATE_MODELS:
        return f"/v2beta/stable-image/generate/{GENERATE_MODELS[model]}", {}
    if model.startswith("sd3"):
        return "/v2beta/stable-image/generate/sd3", {"model": model}
    operation = model.removeprefix("stability-")
    if model.startswith("stability-") and operation in EDIT_OPERATIONS:
        return f"/v2beta/stable-image/edit/{operation}", {}
    raise InvalidRequestError(f"The model '{model}' is not a Stability AI model imagegate knows.", param="model")


class StabilityUpstream(ProviderHTTP, Provider):
    def __init__(
        self, name: str, *, base_url: str, api_key: str | None, timeout_s: float = 120.0, connect_timeout_s: float = 10.0
    ) -> None:
        super().__init__(name, base_url=base_url, timeout_s=timeout_s, connect_timeout_s=connect_timeout_s)
        self._api_key = api_key

    def _form(self, request: GenerationRequest, fields: dict[str, str]) -> aiohttp.FormData:
        form = aiohttp.FormData(default_to_multipart=True)
        values: dict[str, Any] = {**fields, "output_format": request.output_format}
        if request.prompt:
            values["prompt"] = request.prompt
        if request.negative_prompt:
            values["negative_prompt"] = request.negative_prompt
        values.update(request.extra)
        for key, value in values.items():
            form.add_field(key, value if isinstance(value, str) else json.dumps(value))
        if request.images:
            image = request.images[0]
            form.add_field("image", image.data, filename=image.filename, content_type=image.media_type)
            if request.operation == "edit" and request.model.startswith("sd3") and "mode" not in request.extra:
                form.add_field("mode", "image-to-image")
        if request.mask is not None:
            mask = request.mask
            form.add_field("mask", mask.data, filename=mask.filename, content_type=mask.media_type)
        return form

    async def _one(self, request: GenerationRequest, path: str, fields: dict[str, str]) -> tuple[GeneratedImage, dict[str, Any]]:
        headers = {"Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        _, _, body = await self.call("POST", self.base_url + path, data=self._form(request, fields), headers=headers)
        try:
            payload = json.loads(body)
            data = base64.b64decode(payload["image"], validate=True)
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise UpstreamBadResponseError("Stability answered without a base64 `image`.") from exc
        media_type = sniff_media_type(data)
        if media_type is None:
            raise UpstreamBadResponseError("Stability's image is not a PNG, JPEG or WebP image.")
        return GeneratedImage(data=data, media_type=media_type), {
            "finish_reason": payload.get("finish_reason"),
            "seed": payload.get("seed"),
        }

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        started = time.perf_counter()
        path, fields = endpoint(request.model)
        answers = await asyncio.gather(*(self._one(request, path, fields) for _ in range(request.n)))
        images = [image for image, _ in answers]
        first = answers[0][1]
        return GenerationResult(
            provider=self.name,
            model=request.model,
            images=images,
            metadata={
                "seed": first["seed"],
                "finish_reason": first["finish_reason"],
                "seeds": [meta["seed"] for _, meta in answers],
                "finish_reasons": [meta["finish_reason"] for _, meta in answers],
                "output_format": request.output_format,
                "cost_hint": cost_hint(images=len(images), credits=CREDITS.get(request.model, 0) * len(images) or None),
            },
            upstream_latency_s=time.perf_counter() - started,
        )
