"""The OpenAI Images API as clients see it: parse their requests, render results and errors.

`POST /v1/images/generations` (JSON) and `POST /v1/images/edits` (multipart: one or more `image`,
`image[]` or `image[N]` parts, an optional `mask`) become a `GenerationRequest`; a finished exchange
is rendered back as OpenAI's `ImagesResponse` (base64 or imagegate URLs), so the official SDK keeps
working unchanged; in provenance sidecar/both mode each image also names its C2PA manifest store
(`c2pa_manifest_url` or `c2pa_manifest_b64`, extra fields the SDK keeps in `model_extra`). Errors
come out in OpenAI's shape: `{"error": {"message", "type", "code", "param"}}`.

Parsing enforces the body limit while reading (never buffers more than the limit), accepts unknown
fields (passed to the upstream as they are, so new SDK parameters keep working) and refuses what
imagegate cannot honour (an output format it cannot sign) with a clear message.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import (
    ImagegateError,
    InvalidRequestError,
    UnsupportedMediaError,
    UpstreamStatusError,
)
from ..exchange import Exchange, GenerationRequest, InputImage, sniff_media_type
from ..stages.provenance import manifest_fields
from .surface import (
    ParseContext,
    SurfaceRoute,
    bearer_token,
    check_length,
    load_json_object,
    next_part,
    open_multipart,
    read_limited,
    read_part,
    safe_filename,
)

#: Fields this surface interprets; anything else is passed upstream unchanged.
_KNOWN = {"model", "prompt", "n", "size", "quality", "response_format", "output_format", "user"}


class ImagesRequestBody(BaseModel):
    """The OpenAI image request fields imagegate interprets (other fields pass through)."""

    model_config = ConfigDict(extra="allow")

    prompt: str = Field(min_length=1, max_length=32000)
    model: str | None = None
    n: int = Field(1, ge=1, le=10)
    size: str | None = Field(None, pattern=r"^(auto|\d{2,5}x\d{2,5})$")
    quality: str | None = Field(None, max_length=32)
    response_format: Literal["b64_json", "url"] | None = None
    output_format: Literal["png", "jpeg", "webp"] | None = None
    user: str | None = Field(None, max_length=256)


def _validation_message(exc: ValidationError) -> tuple[str, str | None]:
    first = exc.errors()[0]
    param = ".".join(str(part) for part in first.get("loc", ())) or None
    if first.get("type") == "missing":
        return f"Missing required parameter: '{param}'.", param
    return f"Invalid value for '{param}': {first.get('msg', 'invalid')}.", param


def _to_request(
    fields: dict[str, Any],
    operation: Literal["generate", "edit"],
    default_model: str,
    images: list[InputImage] | None = None,
    mask: InputImage | None = None,
) -> GenerationRequest:
    try:
        body = ImagesRequestBody.model_validate(fields)
    except ValidationError as exc:
        message, param = _validation_message(exc)
        raise InvalidRequestError(message, param=param, code="invalid_value") from exc
    extra = {key: value for key, value in fields.items() if key not in _KNOWN}
    return GenerationRequest(
        operation=operation,
        model=body.model or default_model,
        prompt=body.prompt,
        negative_prompt=extra.pop("negative_prompt", None) if isinstance(extra.get("negative_prompt"), str) else None,
        n=body.n,
        size=body.size,
        quality=body.quality,
        output_format=body.output_format or "png",
        response_format=body.response_format or "b64_json",
        user=body.user,
        images=images or [],
        mask=mask,
        extra=extra,
    )


async def parse_generation(request: web.Request, *, default_model: str, max_body_bytes: int) -> GenerationRequest:
    fields = load_json_object(await read_limited(request, max_body_bytes))
    return _to_request(fields, "generate", default_model)


async def parse_edit(request: web.Request, *, default_model: str, max_body_bytes: int) -> GenerationRequest:
    check_length(request, max_body_bytes)
    if not request.content_type.startswith("multipart/form-data"):
        raise UnsupportedMediaError("Image edits must be sent as multipart/form-data.")
    reader = await open_multipart(request)
    fields: dict[str, Any] = {}
    images: list[InputImage] = []
    mask: InputImage | None = None
    total = 0
    while (part := await next_part(reader)) is not None:
        name = part.name or ""
        data = await read_part(part, already=total, limit=max_body_bytes)
        total += len(data)
        if name == "mask" or name == "image" or name.startswith("image["):
            media_type = sniff_media_type(data)
            if media_type is None:
                raise InvalidRequestError(
                    f"The '{name}' part is not a PNG, JPEG or WebP image.", param=name, code="invalid_image"
                )
            image = InputImage(
                data=data,
                media_type=media_type,
                filename=safe_filename(part.filename, "mask" if name == "mask" else "image"),
                role="mask" if name == "mask" else "image",
            )
            if name == "mask":
                mask = image
            else:
                images.append(image)
        elif name:
            if len(fields) >= 64:
                raise InvalidRequestError("Too many form fields.", code="invalid_multipart")
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidRequestError(f"Form field '{name}' is not UTF-8 text.", param=name) from exc
            fields[name] = int(text) if name == "n" and text.strip().isdigit() else text
    if not images:
        raise InvalidRequestError("Missing required parameter: 'image'.", param="image", code="missing_required_parameter")
    if len(images) > 16:
        raise InvalidRequestError("At most 16 input images are accepted.", param="image")
    return _to_request(fields, "edit", default_model, images, mask)


def render_result(exchange: Exchange) -> web.Response:
    """The OpenAI `ImagesResponse` for a finished, successful exchange."""
    result = exchange.result
    assert result is not None and exchange.request is not None
    data: list[dict[str, Any]] = []
    for index, image in enumerate(result.images):
        if image.withheld:
            continue
        item: dict[str, Any] = {}
        if exchange.request.response_format == "url":
            item["url"] = image.asset_url
        else:
            item["b64_json"] = base64.b64encode(image.data).decode("ascii")
        if image.revised_prompt:
            item["revised_prompt"] = image.revised_prompt
        # Sidecar/both provenance modes: where the image's C2PA manifest store is (an extra field
        # the OpenAI SDK keeps in `model_extra`); absent in embedded mode.
        item.update(manifest_fields(exchange, index))
        data.append(item)
    body: dict[str, Any] = {"created": result.created, "data": data}
    body.update({key: value for key, value in result.metadata.items() if key in ("background", "quality", "size")})
    body["output_format"] = exchange.request.output_format
    if result.usage:
        body["usage"] = result.usage
    return web.Response(body=json.dumps(body).encode(), status=200, content_type="application/json")


def error_body(error: ImagegateError) -> dict[str, Any]:
    return {"error": {"message": error.message, "type": error.type, "param": error.param, "code": error.code}}


def render_error(error: ImagegateError) -> web.Response:
    if isinstance(error, UpstreamStatusError):
        # The provider's own error, already in its shape: pass it back unchanged.
        content_type = error.content_type.split(";")[0].strip() or "application/json"
        return web.Response(body=error.body, status=error.status, content_type=content_type)
    return web.Response(
        body=json.dumps(error_body(error)).encode(),
        status=error.status,
        content_type="application/json",
        headers=error.headers,
    )


class OpenAISurface:
    """The OpenAI Images API surface, mounted at `/v1/images/...` (where the OpenAI SDK sends it)."""

    name = "openai"

    def routes(self) -> list[SurfaceRoute]:
        return [
            SurfaceRoute("POST", "/v1/images/generations", "generate"),
            SurfaceRoute("POST", "/v1/images/edits", "edit"),
        ]

    def credential(self, request: web.Request) -> str | None:
        return bearer_token(request)

    async def parse(self, request: web.Request, route: SurfaceRoute, context: ParseContext) -> GenerationRequest:
        parse = parse_edit if route.kind == "edit" else parse_generation
        return await parse(request, default_model=context.default_model, max_body_bytes=context.max_body_bytes)

    def render_result(self, exchange: Exchange, request: web.Request) -> web.Response:
        return render_result(exchange)

    def links_sidecars(self, request: web.Request) -> bool:
        return False  # sidecars are named by the image items or served beside the assets

    def render_error(self, error: ImagegateError) -> web.Response:
        return render_error(error)
