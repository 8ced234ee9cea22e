"""The OpenAI Images API as an upstream: sends normalised requests, returns normalised results.

imagegate injects the upstream key (clients never hold it). Images are always requested as base64
where the model allows a choice, because every image must be classified and signed before the client
sees it; a URL answer is fetched only over https, from the configured hosts, and only from public
addresses (`ImageFetcher`: checked after DNS resolution, so an allowed name pointing inside the
network is refused). Transport failures become imagegate's `Upstream*` errors; an error answer
from OpenAI is passed back unchanged (with imagegate's key masked out of it, `proxy.redact`).
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver
from yarl import URL

from ..errors import UpstreamBadResponseError
from ..exchange import GeneratedImage, GenerationRequest, GenerationResult, sniff_media_type
from ..fetch import AddressPolicy, public_only
from .base import Provider
from .http import MAX_UPSTREAM_BODY, ImageURLProviderHTTP, host_allowed

#: Models that accept `response_format` (the gpt-image family always answers in base64).
RESPONSE_FORMAT_MODELS = ("dall-e-2", "dall-e-3")


class OpenAIUpstream(ImageURLProviderHTTP, Provider):
    def __init__(
        self,
        name: str,
        *,
        base_url: str,
        api_key: str | None,
        timeout_s: float = 120.0,
        connect_timeout_s: float = 10.0,
        image_url_hosts: list[str] | None = None,
        address_policy: AddressPolicy = public_only,
        resolver: AbstractResolver | None = None,
    ) -> None:
        # Image URLs (dall-e) are fetched like every provider's: allow-listed hosts, public addresses
        # only (checked after DNS and on every redirect), size and time caps.
        super().__init__(
            name, base_url=base_url, api_key=api_key, timeout_s=timeout_s, connect_timeout_s=connect_timeout_s,
            image_url_hosts=image_url_hosts, address_policy=address_policy, image_max_bytes=MAX_UPSTREAM_BODY,
            image_fetch_timeout_s=timeout_s, resolver=resolver,
        )

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}

    # -- request building ------------------------------------------------------------------------

    def _fields(self, request: GenerationRequest) -> dict[str, Any]:
        fields: dict[str, Any] = {"model": request.model, "prompt": request.prompt, "n": request.n}
        if request.size:
            fields["size"] = request.size
        if request.quality:
            fields["quality"] = request.quality
        if request.model.startswith(RESPONSE_FORMAT_MODELS):
            fields["response_format"] = "b64_json"
        else:
            fields["output_format"] = request.output_format
        if request.user:
            fields["user"] = request.user
        fields.update(request.extra)
        return fields

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        started = time.perf_counter()
        fields = self._fields(request)
        if request.operation == "edit":
            form = aiohttp.FormData()
            for key, value in fields.items():
                form.add_field(key, value if isinstance(value, str) else json.dumps(value))
            image_field = "image[]" if len(request.images) > 1 else "image"
            for image in request.images:
                form.add_field(image_field, image.data, filename=image.filename, content_type=image.media_type)
            if request.mask is not None:
                mask = request.mask
                form.add_field("mask", mask.data, filename=mask.filename, content_type=mask.media_type)
            body: Any = form
            url = f"{self.base_url}/images/edits"
            kwargs: dict[str, Any] = {"data": body}
        else:
            url = f"{self.base_url}/images/generations"
            kwargs = {"json": fields}
        payload = await self._post(url, kwargs)
        images = await self._images(payload, request)
        return GenerationResult(
            provider=self.name,
            model=request.model,
            images=images,
            created=int(payload.get("created") or time.time()),
            usage=payload.get("usage") if isinstance(payload.get("usage"), dict) else None,
            metadata={k: payload[k] for k in ("background", "output_format", "quality", "size") if k in payload},
            upstream_latency_s=time.perf_counter() - started,
        )

    async def _post(self, url: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        _, _, body = await self.call("POST", url, headers=self._headers(), **kwargs)
        try:
            payload = json.loads(body)
        except ValueError as exc:
            raise UpstreamBadResponseError("The upstream provider answered with invalid JSON.") from exc
        if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
            raise UpstreamBadResponseError("The upstream provider's answer has no `data` list of images.")
        return payload

    async def _images(self, payload: dict[str, Any], request: GenerationRequest) -> list[GeneratedImage]:
        images: list[GeneratedImage] = []
        for index, item in enumerate(payload["data"]):
            if not isinstance(item, dict):
                raise UpstreamBadResponseError(f"Upstream image {index} is not an object.")
            if item.get("b64_json"):
                try:
                    data = base64.b64decode(item["b64_json"], validate=True)
                except (binascii.Error, TypeError) as exc:
                    raise UpstreamBadResponseError(f"Upstream image {index} is not valid base64.") from exc
            elif item.get("url"):
                data = await self._fetch_image(str(item["url"]))
            else:
                raise UpstreamBadResponseError(f"Upstream image {index} has neither b64_json nor url.")
            media_type = sniff_media_type(data)
            if media_type is None:
                raise UpstreamBadResponseError(f"Upstream image {index} is not a PNG, JPEG or WebP image.")
            images.append(GeneratedImage(data=data, media_type=media_type, revised_prompt=item.get("revised_prompt")))
        return images

    async def _fetch_image(self, url: str) -> bytes:
        parsed = URL(url)
        if parsed.scheme != "https" or not host_allowed(parsed.host or "", self.image_url_hosts):
            raise UpstreamBadResponseError(
                f"The upstream returned an image URL on host {parsed.host!r}, which is not in "
                "this provider's `image_url_hosts` allow-list."
            )
        data, _ = await self.fetcher.fetch_image(url)
        return data
