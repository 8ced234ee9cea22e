"""imagegate's own OpenAPI 3.1 description, served at `GET /openapi.json`.

It describes the routes imagegate answers itself: the OpenAI Images API it re-implements, the other
provider surfaces (their paths taken from each surface's `routes()`), provenance verification, the
signed asset URLs, the audit and review API, and the operator endpoints. Request schemas are derived
from what the code validates with (the pydantic model of the OpenAI request, the limits and enums
of each module), so the description cannot drift from the behaviour without a test noticing
(`tests/reliability/test_fuzz.py` runs schemathesis against it; `test_openapi_covers_every_route`
compares it with the router).

Two kinds of route are deliberately left out (`UNDOCUMENTED`): the pass-through catch-all, which is
the upstream provider's API and not imagegate's, and the static admin page.

This module only describes: it never reads settings secrets, never touches a store, and builds the
document from the surfaces it is given.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from .admin.routes import MAX_LIMIT
from .adapters.openai_surface import ImagesRequestBody
from .adapters.surface import MAX_JSON_DEPTH, Surface, SurfaceRoute
from .provenance_api import MAX_IMAGES, MAX_URLS
from .stores.assets import _NAME as ASSET_NAME

#: Routes registered without a description, by (method, canonical path), and why.
UNDOCUMENTED: dict[tuple[str, str], str] = {
    ("*", "/v1/{tail}"): "pass-through: the upstream provider's own API, streamed unchanged",
    ("GET", "/admin"): "redirect to the admin page",
    ("GET", "/admin/"): "the admin page (static HTML)",
    ("GET", "/admin/{name}"): "the admin page's static files",
}

_REF = "#/components/schemas/{model}"
_IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp")


# -- shapes of answers (the request shapes come from the modules that validate them) ----------------


class ErrorDetail(BaseModel):
    """`proxy.adapters.openai_surface.error_body`: OpenAI's error object."""

    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class ImageData(BaseModel):
    model_config = ConfigDict(extra="allow")

    b64_json: str | None = None
    url: str | None = None
    revised_prompt: str | None = None
    c2pa_manifest_url: str | None = Field(
        None,
        description="imagegate extension, `provenance.mode` sidecar or both, URL responses: the signed, expiring URL "
        "of the image's C2PA manifest store (`application/c2pa`, served at `/v1/assets/{name}.c2pa`). Absent in embedded mode.",
    )
    c2pa_manifest_b64: str | None = Field(
        None,
        description="imagegate extension, `provenance.mode` sidecar or both, base64 responses: the image's C2PA "
        "manifest store (`application/c2pa`), base64-encoded. Absent in embedded mode.",
    )


class ImagesResponse(BaseModel):
    """OpenAI's `ImagesResponse`, as `openai_surface.render_result` writes it."""

    model_config = ConfigDict(extra="allow")

    created: int
    data: list[ImageData]
    output_format: Literal["png", "jpeg", "webp"] | None = None
    usage: dict[str, Any] | None = None


class VerifyUrls(BaseModel):
    """The JSON form of `POST /v1/provenance/verify` (`proxy.provenance_api.read_sources`)."""

    urls: list[str] = Field(min_length=1, max_length=MAX_URLS)


class VerifyResponse(BaseModel):
    model_config = ConfigDict(extra="allow")

    results: list[dict[str, Any]]
    summary: dict[str, int]


class RecordList(BaseModel):
    object: Literal["list"]
    data: list[dict[str, Any]]
    next_cursor: str | None


class ReviewDecision(BaseModel):
    """`proxy.admin.routes.decide_review_item`."""

    decision: Literal["approve", "reject"]
    note: str = Field("", max_length=2000)


class ReviewDecided(BaseModel):
    item: dict[str, Any]
    audit_id: str


class Readiness(BaseModel):
    ready: bool
    checks: dict[str, bool]


class StabilityError(BaseModel):
    """Stability AI's error shape (`stability_surface.render_error`)."""

    id: str
    name: str
    errors: list[str]


class BFLError(BaseModel):
    """BFL's FastAPI error shape (`bfl_surface.render_error`)."""

    detail: Any


class ProblemError(BaseModel):
    """Replicate's problem shape (`replicate_surface.render_error`)."""

    model_config = ConfigDict(extra="allow")

    title: str
    detail: str
    status: int


_MODELS: list[type[BaseModel]] = [
    ImagesRequestBody, ErrorDetail, ErrorResponse, ImageData, ImagesResponse, VerifyUrls, VerifyResponse,
    RecordList, ReviewDecision, ReviewDecided, Readiness, StabilityError, BFLError, ProblemError,
]  # fmt: skip


def component_schemas() -> dict[str, Any]:
    """JSON Schemas of `_MODELS`, as OpenAPI components (pydantic writes JSON Schema 2020-12)."""
    _, top = models_json_schema([(model, "validation") for model in _MODELS], ref_template=_REF)
    return dict(top.get("$defs", {}))


def ref(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(model=name)}


# -- building blocks -------------------------------------------------------------------------------


def json_content(schema: dict[str, Any], media_type: str = "application/json") -> dict[str, Any]:
    return {media_type: {"schema": schema}}


def answer(description: str, content: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description, **({"content": content} if content else {})}


def errors(schema_name: str = "ErrorResponse", media_type: str = "application/json") -> dict[str, Any]:
    """The error answers every route may give, in the surface's own error shape."""
    content = json_content(ref(schema_name), media_type)
    return {
        "4XX": answer("The request was refused: the body says why (`code`, `param`).", content),
        "5XX": answer("The gateway or the upstream failed; the request was refused, never let through.", content),
    }


def binary(media_type: str | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string", "format": "binary"}
    if media_type:
        schema["contentMediaType"] = media_type
    return schema


def path_parameters(path: str) -> tuple[str, list[dict[str, Any]]]:
    """The OpenAPI template of an aiohttp path (`{model:[a-z]+}` -> `{model}`) and its parameters,
    each variable's regex kept as the parameter's pattern."""
    template, parameters, position = "", [], 0
    for match in _VARIABLE.finditer(path):
        name, _, regex = match.group(1).partition(":")
        template += path[position : match.start()] + "{" + name + "}"
        position = match.end()
        schema: dict[str, Any] = {"type": "string", "pattern": f"^(?:{regex or '[^{}/]+'})$", "minLength": 1}
        parameters.append({"name": name, "in": "path", "required": True, "schema": schema})
    return template + path[position:], parameters


#: `{name}` or `{name:regex}`, the regex possibly holding one level of braces (`[a-z]{1,3}`).
_VARIABLE = re.compile(r"\{([_a-zA-Z][^{}]*(?:\{[^{}]*\}[^{}]*)*)\}")


def query(name: str, schema: dict[str, Any], description: str, required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": schema, "description": description}


# -- the OpenAI surface and the other provider surfaces ----------------------------------------------


def edit_form() -> dict[str, Any]:
    """The multipart body of `/v1/images/edits`: the same fields as a generation, plus images."""
    fields = ImagesRequestBody.model_json_schema()
    properties = {
        **fields["properties"],
        "image": {"oneOf": [binary(), {"type": "array", "items": binary(), "minItems": 1, "maxItems": 16}]},
        "mask": binary(),
    }
    return {"type": "object", "properties": properties, "required": ["image", *fields.get("required", [])]}


def stability_form(route: SurfaceRoute) -> dict[str, Any]:
    """`stability_surface.read_form` / `StabilitySurface.parse`."""
    properties: dict[str, Any] = {
        "prompt": {"type": "string", "maxLength": 10000},
        "negative_prompt": {"type": "string"},
        "output_format": {"type": "string", "enum": ["png", "jpeg", "webp"]},
        "model": {"type": "string"},
        "seed": {"type": "integer", "minimum": 0},
        "aspect_ratio": {"type": "string"},
    }
    required = ["prompt"]
    if route.options.get("edit"):
        properties.update(image=binary(), mask=binary())
        required = ["image"] + ([] if route.options["edit"] in ("erase", "remove-background", "outpaint") else ["prompt"])
    return {"type": "object", "properties": properties, "required": required}


def bfl_body() -> dict[str, Any]:
    """`BFLSurface.parse`: the fields imagegate reads; others go to BFL unchanged."""
    return {
        "type": "object",
        "properties": {
            "prompt": {"type": "string", "minLength": 1},
            "width": {"type": "integer"},
            "height": {"type": "integer"},
            "output_format": {"type": "string", "enum": ["jpeg", "png"]},
            "input_image": {"type": "string", "description": "base64 (optionally a data: URL)"},
            "webhook_url": {"type": "string", "format": "uri"},
            "webhook_secret": {"type": "string"},
        },
        "required": ["prompt"],
        "maxProperties": 64,
    }


def replicate_body(route: SurfaceRoute) -> dict[str, Any]:
    """`ReplicateSurface.parse`."""
    body: dict[str, Any] = {
        "type": "object",
        "properties": {
            "input": {
                "type": "object",
                "properties": {"prompt": {"type": "string", "minLength": 1}, "num_outputs": {"type": "integer", "minimum": 1, "maximum": 10}},
                "required": ["prompt"],
            },
            "webhook": {"type": "string", "format": "uri"},
        },
        "required": ["input"],
    }
    if "{owner}" not in route.path:
        body["properties"]["version"] = {"type": "string", "minLength": 1}
        body["required"].append("version")
    return body


#: Per surface: (security scheme, error schema, error media type). Unknown surfaces use bearer auth.
SURFACE_STYLE: dict[str, tuple[str, str, str]] = {
    "openai": ("bearerAuth", "ErrorResponse", "application/json"),
    "stability": ("bearerAuth", "StabilityError", "application/json"),
    "bfl": ("bflKey", "BFLError", "application/json"),
    "replicate": ("bearerAuth", "ProblemError", "application/problem+json"),
    "fal": ("falKey", "", ""),
    "google": ("googleKey", "", ""),
}


def surface_request(surface: Surface, route: SurfaceRoute) -> dict[str, Any] | None:
    """The request body of one surface route, where imagegate knows its shape; None for no body."""
    if route.method == "GET":
        return None
    if surface.name == "openai":
        if route.kind == "edit":
            return {"required": True, "content": {"multipart/form-data": {"schema": edit_form()}}}
        return {"required": True, "content": json_content(ref("ImagesRequestBody"))}
    if surface.name == "stability":
        return {"required": True, "content": {"multipart/form-data": {"schema": stability_form(route)}}}
    if surface.name == "bfl":
        return {"required": True, "content": json_content(bfl_body())}
    if surface.name == "replicate" and route.kind == "submit":
        return {"required": True, "content": json_content(replicate_body(route))}
    if route.kind in ("generate", "edit", "submit"):
        return {"required": True, "content": json_content({"type": "object", "description": "the provider's own request body"})}
    return None


def surface_success(surface: Surface, route: SurfaceRoute) -> dict[str, Any]:
    if surface.name == "openai":
        return {"200": answer("The moderated, signed images.", json_content(ref("ImagesResponse")))}
    if surface.name == "stability":
        content = {"image/*": {"schema": binary()}, "application/json": {"schema": {"type": "object"}}}
        return {"200": answer("The moderated, signed image (raw bytes, or JSON with `Accept: application/json`).", content)}
    description = {
        "submit": "The job, as the provider shows a submitted one.",
        "poll": "The job; finished jobs link imagegate's signed copies of the moderated images.",
    }.get(route.kind, "The provider-shaped answer.")
    return {status: answer(description, json_content({"type": "object"})) for status in ("200", "201")}


def surface_operation(surface: Surface, route: SurfaceRoute) -> tuple[str, dict[str, Any]]:
    template, parameters = path_parameters(route.path)
    scheme, error_schema, error_type = SURFACE_STYLE.get(surface.name, ("bearerAuth", "", ""))
    responses = surface_success(surface, route)
    if error_schema:
        responses.update(errors(error_schema, error_type))
    else:
        responses["default"] = answer("An error in the provider's own shape.", json_content({"type": "object"}))
    operation: dict[str, Any] = {
        "operationId": f"{surface.name}_{route.kind}_{re.sub(r'[^A-Za-z0-9]+', '_', template).strip('_')}_{route.method.lower()}",
        "tags": [surface.name],
        "summary": f"{surface.name} {route.kind}",
        "security": [{scheme: []}],
        "parameters": parameters + surface_query(surface, route),
        "responses": responses,
    }
    body = surface_request(surface, route)
    if body is not None:
        operation["requestBody"] = body
    return template, operation


def surface_query(surface: Surface, route: SurfaceRoute) -> list[dict[str, Any]]:
    if surface.name == "bfl" and route.kind == "poll":
        return [query("id", {"type": "string"}, "the job id from the submit", required=True)]
    return []


# -- imagegate's own routes ------------------------------------------------------------------------


def own_paths() -> dict[str, dict[str, Any]]:
    bearer = [{"bearerAuth": []}]
    id_param = {"name": "id", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
    record_filters = [
        query("tenant", {"type": "string"}, "must be the admin key's own tenant"),
        query("user", {"type": "string"}, "end user"),
        query("model", {"type": "string"}, "model id"),
        query("outcome", {"type": "string"}, "allow, flag, blur, block, error, rejected, review, admin_read (reads of the trail, left out unless asked for)..."),
        query("decision", {"type": "string"}, "an action any stage took"),
        query("category", {"type": "string"}, "a category any decision named"),
        query("since", {"type": "string"}, "epoch seconds, ISO 8601, or an age such as 7d"),
        query("until", {"type": "string"}, "same forms as since"),
        query("order", {"type": "string", "enum": ["asc", "desc"]}, "newest first by default"),
        query("cursor", {"type": "string", "pattern": r"^[ad]\d{1,18}$"}, "next_cursor of the previous page"),
        query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}, "page size"),
    ]
    asset_answer = {
        **answer(
            "The image, or for a `.c2pa` name the image's C2PA manifest store (provenance sidecar/both mode).",
            {media_type: {"schema": binary()} for media_type in (*_IMAGE_TYPES, "application/c2pa")},
        ),
        "headers": {
            "Link": {
                "description": 'On an image that has a sidecar: `<signed URL of the .c2pa>; rel="c2pa-manifest"`.',
                "schema": {"type": "string"},
            }
        },
    }
    verify_body = {
        "multipart/form-data": {
            "schema": {"type": "object", "properties": {"image": {"type": "array", "items": binary(), "maxItems": MAX_IMAGES}}}
        },
        **{media_type: {"schema": binary(media_type)} for media_type in _IMAGE_TYPES},
        "application/json": {"schema": ref("VerifyUrls")},
    }
    return {
        "/v1/provenance/verify": {
            "post": {
                "operationId": "verify_provenance",
                "tags": ["provenance"],
                "summary": "Check the Content Credentials (C2PA) of uploaded or linked images",
                "description": f"Multipart parts (at most {MAX_IMAGES}), one raw image, or JSON with at most {MAX_URLS} URLs "
                "(fetched with SSRF protection: public addresses only).",
                "security": bearer,
                "requestBody": {"required": True, "content": verify_body},
                "responses": {"200": answer("One report per image, and a summary.", json_content(ref("VerifyResponse"))), **errors()},
            }
        },
        "/v1/assets/{name}": {
            "get": {
                "operationId": "get_asset",
                "tags": ["assets"],
                "summary": "An image imagegate returned as a URL, or its C2PA sidecar `<name>.c2pa` (signed, expiring; the signature is the credential)",
                "security": [],
                "parameters": [
                    {"name": "name", "in": "path", "required": True, "schema": {"type": "string", "pattern": ASSET_NAME.pattern}},
                    query("expires", {"type": "string", "pattern": r"^\d+$"}, "expiry, epoch seconds", required=True),
                    query("signature", {"type": "string", "pattern": "^[0-9a-f]{64}$"}, "HMAC-SHA256", required=True),
                ],
                "responses": {"200": asset_answer, **errors()},
            }
        },
        "/v1/audit/records": {
            "get": {
                "operationId": "list_audit_records",
                "tags": ["audit"],
                "summary": "The tenant's audit records (admin key)",
                "security": bearer,
                "parameters": record_filters,
                "responses": {"200": answer("A page of records.", json_content(ref("RecordList"))), **errors()},
            }
        },
        "/v1/audit/records/{id}": {
            "get": {
                "operationId": "get_audit_record",
                "tags": ["audit"],
                "summary": "One audit record with its chain data (admin key; other tenants' records answer 404)",
                "security": bearer,
                "parameters": [id_param],
                "responses": {"200": answer("The record.", json_content({"type": "object"})), **errors()},
            }
        },
        "/v1/audit/records/{id}/images/{index}": {
            "get": {
                "operationId": "get_audit_record_image",
                "tags": ["audit"],
                "summary": "A retained image of a record (admin key)",
                "security": bearer,
                "parameters": [id_param, {"name": "index", "in": "path", "required": True, "schema": {"type": "string", "pattern": r"^\d+$"}}],
                "responses": {"200": answer("The image.", {"*/*": {"schema": binary()}}), **errors()},
            }
        },
        "/v1/review/items": {
            "get": {
                "operationId": "list_review_items",
                "tags": ["review"],
                "summary": "The tenant's review queue (admin key)",
                "security": bearer,
                "parameters": [
                    query("status", {"type": "string", "enum": ["pending", "approved", "rejected", "all"]}, "pending by default"),
                    query("cursor", {"type": "string"}, "next_cursor of the previous page"),
                    query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}, "page size"),
                ],
                "responses": {"200": answer("A page of review items.", json_content(ref("RecordList"))), **errors()},
            }
        },
        "/v1/review/items/{id}": {
            "get": {
                "operationId": "get_review_item",
                "tags": ["review"],
                "summary": "One review item (admin key)",
                "security": bearer,
                "parameters": [id_param],
                "responses": {"200": answer("The item.", json_content({"type": "object"})), **errors()},
            },
            "post": {
                "operationId": "decide_review_item",
                "tags": ["review"],
                "summary": "Approve or reject a held image; the decision is itself an audit record",
                "security": bearer,
                "parameters": [id_param],
                "requestBody": {"required": True, "content": json_content(ref("ReviewDecision"))},
                "responses": {"200": answer("The decided item.", json_content(ref("ReviewDecided"))), **errors()},
            },
        },
        "/v1/review/items/{id}/image": {
            "get": {
                "operationId": "get_review_item_image",
                "tags": ["review"],
                "summary": "The held image of a review item (admin key)",
                "security": bearer,
                "parameters": [id_param],
                "responses": {"200": answer("The image.", {"*/*": {"schema": binary()}}), **errors()},
            }
        },
        "/healthz": {"get": operator("healthz", "The process is up.", json_content({"type": "object"}))},
        "/readyz": {
            "get": {
                **operator("readyz", "Every store and stage is ready.", json_content(ref("Readiness"))),
                "responses": {
                    "200": answer("Ready.", json_content(ref("Readiness"))),
                    "503": answer("Not ready: `checks` says what is not.", json_content(ref("Readiness"))),
                },
            }
        },
        "/metrics": {"get": operator("metrics", "Prometheus metrics.", {"text/plain": {"schema": {"type": "string"}}})},
        "/openapi.json": {"get": operator("openapi", "This description.", json_content({"type": "object"}))},
    }


def operator(name: str, description: str, content: dict[str, Any]) -> dict[str, Any]:
    return {
        "operationId": name,
        "tags": ["operations"],
        "summary": description,
        "security": [],
        "responses": {"200": answer(description, content)},
    }


def build_openapi(surfaces: Sequence[Surface]) -> dict[str, Any]:
    """The whole description, for the given API surfaces."""
    paths = own_paths()
    for surface in surfaces:
        for route in surface.routes():
            template, operation = surface_operation(surface, route)
            paths.setdefault(template, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "imagegate",
            "version": "1",
            "description": "A moderation and compliance proxy for image-generation APIs. Provider routes answer in "
            f"the provider's own format. JSON bodies nest at most {MAX_JSON_DEPTH} levels.",
        },
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": component_schemas(),
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "description": "an imagegate tenant key (admin key for audit and review)"},
                "bflKey": {"type": "apiKey", "in": "header", "name": "x-key"},
                "falKey": {"type": "apiKey", "in": "header", "name": "Authorization", "description": "`Key <imagegate key>`"},
                "googleKey": {"type": "apiKey", "in": "header", "name": "x-goog-api-key"},
            },
        },
    }


async def openapi_handler(request: web.Request) -> web.Response:
    """`GET /openapi.json`: built from the app's own surfaces, so new surfaces appear by themselves."""
    from .app import GATEWAY

    return web.json_response(build_openapi(request.app[GATEWAY].surfaces))
