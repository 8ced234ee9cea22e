"""Stability AI's v2beta Stable Image API as clients see it, mounted under `/stability`.

A client points its base URL at `https://imagegate.example/stability` instead of
`https://api.stability.ai` and keeps everything else (https://platform.stability.ai/docs/api-reference):
`POST /v2beta/stable-image/generate/{ultra,core,sd3}` and `/v2beta/stable-image/edit/{operation}`
as multipart forms, `Authorization: Bearer <imagegate key>`. The answer follows the `Accept` header
like Stability's: `image/*` gives the raw image bytes with `finish-reason` and `seed` headers,
`application/json` gives `{"image": base64, "finish_reason", "seed"}`. Errors come out in
Stability's shape, `{"id", "name", "errors": [...]}`; a moderation block is a 403 named
`content_moderation`, as Stability's own. In provenance sidecar/both mode the JSON answer also
carries the image's C2PA manifest store as `c2pa_manifest_b64`, and the raw answer names it in a
`Link: <signed URL>; rel="c2pa-manifest"` header.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from typing import Any

from aiohttp import web

from ..errors import ImagegateError, InvalidRequestError, UnsupportedMediaError, UpstreamStatusError
from ..exchange import Exchange, GenerationRequest, InputImage, sniff_media_type
from ..stages.provenance import manifest_fields
from .stability import EDIT_OPERATIONS, GENERATE_MODELS
from .surface import (
    ParseContext,
    SurfaceRoute,
    bearer_token,
    check_length,
    next_part,
    open_multipart,
    read_part,
    safe_filename,
)

PREFIX = "/stability"
_TEXT_FIELDS_MAX = 64
_HEADER_TOKEN = re.compile(r"[A-Za-z0-9_.:+-]{1,64}")
_NAMES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 413: "payload_too_large",
          415: "unsupported_media_type", 422: "invalid_parameters", 429: "rate_limit_exceeded"}


async def read_form(request: web.Request, limit: int, file_fields: set[str]) -> tuple[dict[str, str], dict[str, InputImage]]:
    """Text fields and image parts of a multipart body, the body limit enforced while reading."""
    check_length(request, limit)
    if not request.content_type.startswith("multipart/form-data"):
        raise UnsupportedMediaError("Send the request as multipart/form-data, as the Stability API requires.")
    reader = await open_multipart(request)
    fields: dict[str, str] = {}
    files: dict[str, InputImage] = {}
    total = 0
    while (part := await next_part(reader)) is not None:
        name = part.name or ""
        data = await read_part(part, already=total, limit=limit)
        total += len(data)
        if name in file_fields:
            media_type = sniff_media_type(data)
            if media_type is None:
                raise InvalidRequestError(f"The '{name}' part is not a PNG, JPEG or WebP image.", param=name)
            files[name] = InputImage(data, media_type, safe_filename(part.filename, name), "mask" if name == "mask" else "image")
        elif name:
            if len(fields) >= _TEXT_FIELDS_MAX:
                raise InvalidRequestError("Too many form fields.", code="invalid_multipart")
            try:
                fields[name] = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidRequestError(f"Form field '{name}' is not UTF-8 text.", param=name) from exc
    return fields, files


def _header_token(value: Any) -> str | None:
    """An upstream value fit for a response header (`finish-reason`, `seed`), or None.

    These values come from the provider's answer; one carrying CR/LF or other control characters
    would make aiohttp refuse to write the headers and drop the connection after the exchange was
    audited as a success. Only short token-like values pass.
    """
    text = str(value) if value is not None else ""
    return text if _HEADER_TOKEN.fullmatch(text) else None


class StabilitySurface:
    name = "stability"

    def routes(self) -> list[SurfaceRoute]:
        routes = [
            SurfaceRoute("POST", f"{PREFIX}/v2beta/stable-image/generate/{family}", "generate", options={"family": family})
            for family in ("ultra", "core", "sd3")
        ]
        routes += [
            SurfaceRoute("POST", f"{PREFIX}/v2beta/stable-image/edit/{operation}", "edit", options={"operation": "edit", "edit": operation})
            for operation in EDIT_OPERATIONS
        ]
        return routes

    def credential(self, request: web.Request) -> str | None:
        return bearer_token(request)

    async def parse(self, request: web.Request, route: SurfaceRoute, context: ParseContext) -> GenerationRequest:
        fields, files = await read_form(request, context.max_body_bytes, {"image", "mask"})
        edit = route.options.get("edit")
        family = route.options.get("family")
        if edit:
            model = f"stability-{edit}"
        elif family == "sd3":
            model = fields.pop("model", None) or "sd3.5-large"
        else:
            model = {value: key for key, value in GENERATE_MODELS.items()}[family]
        prompt = fields.pop("prompt", "")
        if not prompt and edit not in ("erase", "remove-background", "outpaint"):
            raise InvalidRequestError("prompt: required", param="prompt", code="missing_required_parameter")
        if len(prompt) > 10000:
            raise InvalidRequestError("prompt: must be at most 10000 characters", param="prompt")
        output_format = fields.pop("output_format", "png")
        if output_format not in ("png", "jpeg", "webp"):
            raise InvalidRequestError("output_format: must be one of png, jpeg, webp", param="output_format")
        if edit and "image" not in files:
            raise InvalidRequestError("image: required", param="image", code="missing_required_parameter")
        images = [files["image"]] if "image" in files else []
        if family == "sd3" and images and fields.get("mode") is None:
            fields["mode"] = "image-to-image"
        return GenerationRequest(
            operation="edit" if images else "generate",
            model=model,
            prompt=prompt,
            negative_prompt=fields.pop("negative_prompt", None) or None,
            output_format=output_format,
            images=images,
            mask=files.get("mask"),
            extra=fields,
        )

    def render_result(self, exchange: Exchange, request: web.Request) -> web.Response:
        result = exchange.result
        assert result is not None
        image = next(image for image in result.images if not image.withheld)
        seed = result.metadata.get("seed")
        finish_reason = result.metadata.get("finish_reason") or "SUCCESS"
        if self._json_answer(request):
            body = {"image": base64.b64encode(image.data).decode("ascii"), "finish_reason": finish_reason, "seed": seed}
            body.update(manifest_fields(exchange, result.images.index(image)))  # sidecar mode
            return web.json_response(body)
        headers = {"finish-reason": _header_token(finish_reason) or "SUCCESS"}
        seed_token = _header_token(seed)
        if seed_token is not None:
            headers["seed"] = seed_token
        return web.Response(body=image.data, content_type=image.media_type, headers=headers)

    def links_sidecars(self, request: web.Request) -> bool:
        return not self._json_answer(request)  # raw image bytes: the sidecar goes in `Link`

    @staticmethod
    def _json_answer(request: web.Request) -> bool:
        return "application/json" in request.headers.get("Accept", "image/*")

    def render_error(self, error: ImagegateError) -> web.Response:
        if isinstance(error, UpstreamStatusError):
            return web.Response(body=error.body, status=error.status, content_type=error.content_type.split(";")[0] or "application/json")
        status, name = error.status, _NAMES.get(error.status, "server_error" if error.status >= 500 else "bad_request")
        if error.code == "content_policy_violation":
            status, name = 403, "content_moderation"
        body: dict[str, Any] = {"id": uuid.uuid4().hex, "name": name, "errors": [error.message]}
        return web.Response(body=json.dumps(body), status=status, content_type="application/json", headers=error.headers)
