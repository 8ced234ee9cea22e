"""`POST /v1/provenance/verify`: ad-ops check whether images carry valid Content Credentials.

Accepts one or more images as multipart parts, one image as the raw body (`Content-Type: image/...`),
or JSON `{"urls": [...]}` (fetched through the SSRF guard of `proxy.fetch`). Answers one report per
image from `provenance.verify_image`, against the trust anchors the gateway signs under, plus a
summary. Verification runs in worker threads. Each call leaves an audit record.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from aiohttp import web

from provenance import verify_image
from provenance.errors import VerificationError

from .errors import ImagegateError, InvalidRequestError, PayloadTooLargeError
from .adapters.surface import load_json_object, next_part, open_multipart, read_limited, read_part
from .fetch import SafeFetcher

MAX_URLS = 50
MAX_IMAGES = 50


async def read_sources(request: web.Request, fetcher: SafeFetcher, limit: int) -> list[tuple[str, bytes | ImagegateError]]:
    """(name, bytes or the error that stopped us getting them) for every image in the request."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLargeError(f"The request body is larger than the limit of {limit} bytes.")
    content_type = request.content_type
    if content_type.startswith("multipart/"):
        reader = await open_multipart(request)
        sources: list[tuple[str, bytes | ImagegateError]] = []
        total = 0
        while (part := await next_part(reader)) is not None:
            data = await read_part(part, already=total, limit=limit, chunk_size=256 * 1024)
            total += len(data)
            sources.append((part.filename or part.name or f"part-{len(sources)}", data))
            if len(sources) > MAX_IMAGES:
                raise InvalidRequestError(f"At most {MAX_IMAGES} images per call.")
        return sources
    if content_type == "application/json":
        urls = load_json_object(await read_limited(request, limit)).get("urls")
        if not isinstance(urls, list) or not all(isinstance(url, str) for url in urls):
            raise InvalidRequestError('Send {"urls": ["https://...", ...]}.', code="invalid_json")
        if not urls or len(urls) > MAX_URLS:
            raise InvalidRequestError(f"Send between 1 and {MAX_URLS} URLs.", param="urls")

        async def get(url: str) -> tuple[str, bytes | ImagegateError]:
            try:
                data, _ = await fetcher.fetch(url)
                return url, data
            except ImagegateError as error:
                return url, error

        return list(await asyncio.gather(*(get(url) for url in urls)))
    if content_type.startswith("image/"):
        return [("body", await read_limited(request, limit))]
    raise InvalidRequestError(
        "Send images as multipart/form-data, one image as the raw body, or JSON with a list of URLs.",
        code="unsupported_media_type",
        status=415,
    )


async def verify_sources(sources: list[tuple[str, bytes | ImagegateError]], trust_anchors_pem: str | None) -> dict[str, Any]:
    async def one(name: str, data: bytes | ImagegateError) -> dict[str, Any]:
        if isinstance(data, ImagegateError):
            return {"source": name, "state": "unreadable", "error": data.message, "code": data.code}
        try:
            report = await asyncio.to_thread(verify_image, data, None, trust_anchors_pem)
        except VerificationError as exc:
            return {"source": name, "state": "unreadable", "error": str(exc), "code": "not_an_image"}
        return {"source": name, **report.to_dict()}

    results = await asyncio.gather(*(one(name, data) for name, data in sources))
    summary = Counter(result["state"] for result in results)
    return {"results": results, "summary": {"images": len(results), **summary}}
