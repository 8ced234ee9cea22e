"""`POST /v1/provenance/verify`: ad-ops check whether images carry valid Content Credentials.

Accepts one or more images as multipart parts, one image as the raw body (`Content-Type: image/...`),
or JSON `{"urls": [...]}` (fetched through the SSRF guard of `proxy.fetch`). Answers one report per
image from `provenance.verify_image`, against the trust anchors the gateway signs under, plus a
summary. Verification runs in worker threads. Each call leaves an audit record.

A multipart upload may carry sidecar manifest stores (what imagegate's `provenance.mode: sidecar`
and `both` produce): a part with `Content-Type: application/c2pa` or a file name ending in `.c2pa`.
A sidecar belongs to the image part named like it (`photo.png.c2pa` or `photo.c2pa` for
`photo.png`), or, when the upload holds exactly one image and one sidecar, to that image; the
image is then checked against the sidecar. A sidecar that matches no image, or an image with two
sidecars, is a 400.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any, NamedTuple

from aiohttp import web

from provenance import verify_image
from provenance.containers import MANIFEST_STORE_MEDIA_TYPE, SIDECAR_SUFFIX, looks_like_manifest_store
from provenance.errors import VerificationError

from .errors import ImagegateError, InvalidRequestError, PayloadTooLargeError
from .adapters.surface import load_json_object, next_part, open_multipart, read_limited, read_part
from .fetch import SafeFetcher

MAX_URLS = 50
MAX_IMAGES = 50



class Source(NamedTuple):
    """One image to verify (or the error that stopped us getting it), with its sidecar, if any."""

    name: str
    data: bytes | ImagegateError
    manifest_store: bytes | None = None
    manifest_name: str | None = None


async def read_sources(request: web.Request, fetcher: SafeFetcher, limit: int) -> list[Source]:
    """Every image in the request, each with the sidecar manifest store sent for it."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLargeError(f"The request body is larger than the limit of {limit} bytes.")
    content_type = request.content_type
    if content_type.startswith("multipart/"):
        reader = await open_multipart(request)
        sources: list[Source] = []
        sidecars: list[tuple[str, bytes]] = []
        total = 0
        while (part := await next_part(reader)) is not None:
            data = await read_part(part, already=total, limit=limit, chunk_size=256 * 1024)
            total += len(data)
            name = part.filename or part.name or f"part-{len(sources) + len(sidecars)}"
            if _is_sidecar_part(part.headers.get("Content-Type"), part.filename):
                sidecars.append((name, data))
                if len(sidecars) > MAX_IMAGES:
                    raise InvalidRequestError(f"At most {MAX_IMAGES} sidecars per call.")
                continue
            sources.append(Source(name, data))
            if len(sources) > MAX_IMAGES:
                raise InvalidRequestError(f"At most {MAX_IMAGES} images per call.")
        return pair_sidecars(sources, sidecars)
    if content_type == "application/json":
        urls = load_json_object(await read_limited(request, limit)).get("urls")
        if not isinstance(urls, list) or not all(isinstance(url, str) for url in urls):
            raise InvalidRequestError('Send {"urls": ["https://...", ...]}.', code="invalid_json")
        if not urls or len(urls) > MAX_URLS:
            raise InvalidRequestError(f"Send between 1 and {MAX_URLS} URLs.", param="urls")

        async def get(url: str) -> Source:
            try:
                data, _ = await fetcher.fetch(url)
                return Source(url, data)
            except ImagegateError as error:
                return Source(url, error)

        return list(await asyncio.gather(*(get(url) for url in urls)))
    if content_type.startswith("image/"):
        return [Source("body", await read_limited(request, limit))]
    raise InvalidRequestError(
        "Send images as multipart/form-data, one image as the raw body, or JSON with a list of URLs.",
        code="unsupported_media_type",
        status=415,
    )


def pair_sidecars(sources: list[Source], sidecars: list[tuple[str, bytes]]) -> list[Source]:
    """Attach each sidecar to its image (by name; the only image when there is one of each)."""
    if not sidecars:
        return sources
    paired = list(sources)
    for sidecar_name, store in sidecars:
        if len(sources) == 1 and len(sidecars) == 1:
            index = 0
        else:
            stem = sidecar_name[: -len(SIDECAR_SUFFIX)] if sidecar_name.lower().endswith(SIDECAR_SUFFIX) else sidecar_name
            # photo.png.c2pa names photo.png; photo.c2pa names the one image whose stem is photo
            matches = [i for i, source in enumerate(sources) if source.name == stem]
            matches = matches or [i for i, source in enumerate(sources) if source.name.rsplit(".", 1)[0] == stem]
            if len(matches) != 1:
                raise InvalidRequestError(
                    f"The sidecar {sidecar_name!r} matches {'no' if not matches else 'more than one'} image part: "
                    "name it after its image (photo.png.c2pa for photo.png).",
                    param="manifest",
                )
            index = matches[0]
        if paired[index].manifest_store is not None:
            raise InvalidRequestError(f"The image {paired[index].name!r} has more than one sidecar.", param="manifest")
        paired[index] = paired[index]._replace(manifest_store=store, manifest_name=sidecar_name)
    return paired


def _is_sidecar_part(content_type: str | None, filename: str | None) -> bool:
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    return media_type == MANIFEST_STORE_MEDIA_TYPE or bool(filename and filename.lower().endswith(SIDECAR_SUFFIX))


async def verify_sources(sources: list[Source] | list[tuple[str, bytes | ImagegateError]], trust_anchors_pem: str | None) -> dict[str, Any]:
    async def one(source: Source) -> dict[str, Any]:
        name, data, store, store_name = source
        sidecar = {"sidecar": store_name} if store is not None else {}
        if isinstance(data, ImagegateError):
            return {"source": name, **sidecar, "state": "unreadable", "error": data.message, "code": data.code}
        if store is not None and not looks_like_manifest_store(store):
            message = f"The sidecar {store_name!r} is not a C2PA manifest store."
            return {"source": name, **sidecar, "state": "unreadable", "error": message, "code": "invalid_sidecar"}
        try:
            report = await asyncio.to_thread(verify_image, data, None, trust_anchors_pem, store)
        except VerificationError as exc:
            return {"source": name, **sidecar, "state": "unreadable", "error": str(exc), "code": "not_an_image"}
        return {"source": name, **sidecar, **report.to_dict()}

    results = await asyncio.gather(*(one(Source(*source)) for source in sources))
    summary = Counter(result["state"] for result in results)
    return {"results": results, "summary": {"images": len(results), **summary}}
