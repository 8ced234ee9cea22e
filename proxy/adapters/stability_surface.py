"""Stability AI's v2beta Stable Image API as clients see it, mounted under `/stability`.

A client points its base URL at `https://imagegate.example/stability` instead of
`https://api.stability.ai` and keeps everything else (https://platform.stability.ai/docs/api-reference):
`POST /v2beta/stable-image/generate/{ultra,core,sd3}` and `/v2beta/stable-image/edit/{operation}`
as multipart forms, `Authorization: Bearer <imagegate key>`. The answer follows the `Accept` header
like Stability's: `image/*` gives the raw image bytes with `finish-reason` and `seed` headers,
`application/json` gives `{"image": base64, "finish_reason", "seed"}`. Errors come out in
Stability's shape, `{"id", "name", "errors": [...]}`; a moderation block is a 403 named
`content_moderation`, as Stability's own.
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

from aiohttp import BodyPartReader, web

from ..errors import ImagegateError, InvalidRequestError, PayloadTooLargeError, UnsupportedMediaError, UpstreamStatusError
from ..exchange import Exchange, GenerationRequest, InputImage, sniff_media_type
from .stability import EDIT_OPERATIONS, GENERATE_MODELS
from .surface import ParseContext, SurfaceRoute, bearer_token, check_length

PREFIX = "/stability"
_TEXT_FIELDS_MAX = 64
_NAMES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 413: "payload_too_large",
          415: "unsupported_media_type", 422: "invalid_parameters", 429: "rate_limit_exceeded"}


async def read_form(request: web.Request, limit: int, file_fields: set[str]) -> tuple[dict[str, str], dict[str, InputImage]]:
    """Text fields and image parts of a multipart body, the body limit enforced while reading."""
    check_length(request, limit)
    if not request.content_type.startswith("multipart/form-data"):
        raise UnsupportedMediaError("Send the request as multipart/form-data, as the Stability API requires.")
    try:
        reader = await request.multipart()
    except (ValueError, AssertionError) as exc:
        raise InvalidRequestError(f"Malformed multipart body: {exc}.", code="invalid_multipart") from exc
    fields: dict[str, str] = {}
    files: dict[str, InputImage] = {}
    total = 0
    while True:
        try:
            part = await reader.next()
        except ValueError as exc:
            raise InvalidRequestError(f"Malformed multipart body: {exc}.", code="invalid_multipart") from exc
        if part is None:
            break
        if not isinstance(part, BodyPartReader):
            raise InvalidRequestError("Nested multipart bodies are not accepted.", code="invalid_multipart")
        name = part.name or ""
        data = bytearray()
        while chunk := await part.read_chunk(64 * 1024):
            total += len(chunk)
            if total > limit:
                raise PayloadTooLargeError(f"The request body is larger than the limit of {limit} bytes.")
            data.extend(chunk)
        if name in file_fields:
            media_type = sniff_media_type(bytes(data))
            if media_type is None:
                raise InvalidRequestError(f"The '{name}' part is not a PNG, JPEG or WebP image.", param=name)
            files[name] = InputImage(bytes(data), media_type, part.filename or name, "mask" if name == "mask" else "image")
        elif name:
            if len(fields) >= _TEXT_FIELDS_MAX:
                raise InvalidRequestError("Too many form fields.", code="invalid_multipart")
            try:
                fields[name] = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidRequestError(f"Form field '{name}' is not UTF-8 text.", param=name) from exc
    return fields, files


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
        accept = request.headers.get("Accept", "image/*")
        if "application/json" in accept:
            body = {"image": base64.b64encode(image.data).decode("ascii"), "finish_reason": finish_reason, "seed": seed}
            return web.json_response(body)
        headers = {"finish-reason": str(finish_reason)}
        if seed is not None:
            headers["seed"] = str(seed)
        return web.Response(body=image.data, content_type=image.media_type, headers=headers)

    def render_error(self, error: ImagegateError) -> web.Response:
        if isinstance(error, UpstreamStatusError):
            return web.Response(body=error.body, status=error.status, content_type=error.content_type.split(";")[0] or "application/json")
        status, name = error.status, _NAMES.get(error.status, "server_error" if error.status >= 500 else "bad_request")
        if error.code == "content_policy_violation":
            status, name = 403, "content_moderation"
        body: dict[str, Any] = {"id": uuid.uuid4().hex, "name": name, "errors": [error.message]}
        return web.Response(body=json.dumps(body), status=status, content_type="application/json", headers=error.headers)
