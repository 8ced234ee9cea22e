"""The OpenAI Images API as an upstream: sends normalised requests, returns normalised results.

imagegate injects the upstream key (clients never hold it). Images are always requested as base64
where the model allows a choice, because every image must be classified and signed before the client
sees it; a URL answer is fetched only from the configured hosts. Transport failures become
imagegate's `Upstream*` errors; an error answer from OpenAI is passed back unchanged.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from typing import Any

import aiohttp
from yarl import URL

from ..errors import (
    UpstreamBadResponseError,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeoutError,
)
from ..exchange import GeneratedImage, GenerationRequest, GenerationResult, sniff_media_type
from .base import Provider

#: Models that accept `response_format` (the gpt-image family always answers in base64).
RESPONSE_FORMAT_MODELS = ("dall-e-2", "dall-e-3")
#: Largest upstream answer read into memory (base64 of n large images).
MAX_UPSTREAM_BODY = 256 * 1024 * 1024


async def read_body(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, read to the end, refusing anything over `limit` bytes as soon as it is passed."""
    if response.content_length is not None and response.content_length > limit:
        raise UpstreamBadResponseError(f"The upstream answer is larger than imagegate accepts ({limit} bytes).")
    chunks: list[bytes] = []
    total = 0
    async for chunk in response.content.iter_chunked(256 * 1024):
        total += len(chunk)
        if total > limit:
            raise UpstreamBadResponseError(f"The upstream answer is larger than imagegate accepts ({limit} bytes).")
        chunks.append(chunk)
    return b"".join(chunks)


class OpenAIUpstream(Provider):
    def __init__(
        self,
        name: str,
        *,
        base_url: str,
        api_key: str | None,
        timeout_s: float = 120.0,
        connect_timeout_s: float = 10.0,
        image_url_hosts: list[str] | None = None,
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self.timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=connect_timeout_s)
        self.image_url_hosts = set(image_url_hosts or [])
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=self.timeout,
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
            auto_decompress=True,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise UpstreamError(f"provider {self.name!r} is not started")
        return self._session

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
        try:
            async with self.session.post(url, headers=self._headers(), **kwargs) as response:
                body = await read_body(response, MAX_UPSTREAM_BODY)
                if response.status >= 400:
                    if response.status >= 500:
                        raise UpstreamError(
                            f"The upstream provider {self.name!r} failed with HTTP {response.status}.",
                            code="upstream_error",
                        )
                    raise UpstreamStatusError(
                        response.status,
                        body,
                        response.headers.get("Content-Type", "application/json"),
                        f"upstream answered HTTP {response.status}",
                    )
        except asyncio.TimeoutError as exc:
            raise UpstreamTimeoutError(
                f"The upstream provider {self.name!r} did not answer in time ({self.timeout.total:.0f} s)."
            ) from exc
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            raise UpstreamConnectionError(
                f"The connection to the upstream provider {self.name!r} failed: {type(exc).__name__}."
            ) from exc
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
        if parsed.scheme != "https" or parsed.host not in self.image_url_hosts:
            raise UpstreamBadResponseError(
                f"The upstream returned an image URL on host {parsed.host!r}, which is not in "
                "this provider's `image_url_hosts` allow-list."
            )
        try:
            async with self.session.get(url, allow_redirects=False) as response:
                if response.status != 200:
                    raise UpstreamBadResponseError(f"Fetching the upstream image URL gave HTTP {response.status}.")
                return await read_body(response, MAX_UPSTREAM_BODY)
        except asyncio.TimeoutError as exc:
            raise UpstreamTimeoutError("Fetching the upstream image URL timed out.") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamConnectionError(f"Fetching the upstream image URL failed: {type(exc).__name__}.") from exc
