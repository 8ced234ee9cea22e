"""imagegate's OpenAPI description: served, valid OpenAPI 3.1, and describing every route the app
registers (or naming it in `proxy.openapi.UNDOCUMENTED` with the reason), derived from the code's own
validation so that it cannot drift."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from aiohttp.web_urldispatcher import DynamicResource
from openapi_spec_validator import validate

from proxy.adapters.openai_surface import ImagesRequestBody, error_body
from proxy.app import create_app
from proxy.errors import InvalidRequestError, RateLimitError
from proxy.openapi import UNDOCUMENTED, ErrorResponse, build_openapi
from proxy.adapters.registry import default_surfaces
from tests.conftest import make_settings


async def test_openapi_is_served_and_is_valid_openapi_3_1(tmp_path: Path, start_gateway) -> None:
    _, base = await start_gateway(make_settings(tmp_path))
    async with aiohttp.ClientSession() as session:
        async with session.get(base.removesuffix("/v1") + "/openapi.json") as response:
            assert response.status == 200 and response.content_type == "application/json"
            spec = await response.json()
    validate(spec)
    assert spec["openapi"] == "3.1.0"
    assert spec["paths"]["/v1/images/generations"]["post"]["security"] == [{"bearerAuth": []}]


def registered_routes(tmp_path: Path) -> set[tuple[str, str]]:
    """(method, OpenAPI path template) of every route on the router, HEAD (aiohttp's twin of GET) aside."""
    app = create_app(make_settings(tmp_path))
    routes = set()
    for route in app.router.routes():
        if route.method == "HEAD":
            continue
        canonical = route.resource.canonical if route.resource is not None else ""
        routes.add((route.method, canonical))
    return routes


def test_openapi_covers_every_route(tmp_path: Path) -> None:
    spec = build_openapi(default_surfaces())
    described = {(method.upper(), path) for path, item in spec["paths"].items() for method in item}
    registered = registered_routes(tmp_path)
    missing = registered - described - set(UNDOCUMENTED)
    assert not missing, f"routes the app serves that /openapi.json does not describe: {sorted(missing)}"
    phantom = described - registered
    assert not phantom, f"operations /openapi.json describes that the app does not serve: {sorted(phantom)}"
    assert set(UNDOCUMENTED) <= registered, "UNDOCUMENTED names a route that no longer exists"


def test_path_templates_match_aiohttp_canonical_paths() -> None:
    """Every described surface path is aiohttp's canonical form of the registered pattern."""
    spec = build_openapi(default_surfaces())
    for surface in default_surfaces():
        for route in surface.routes():
            assert DynamicResource(route.path).canonical in spec["paths"], route.path


def test_request_schema_is_the_model_the_code_validates_with() -> None:
    spec = build_openapi(default_surfaces())
    body = spec["paths"]["/v1/images/generations"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/ImagesRequestBody"}
    assert spec["components"]["schemas"]["ImagesRequestBody"] == ImagesRequestBody.model_json_schema(
        ref_template="#/components/schemas/{model}"
    )
    edit = spec["paths"]["/v1/images/edits"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert set(ImagesRequestBody.model_fields) < set(edit["properties"]) and "image" in edit["required"]


@pytest.mark.parametrize(
    "error",
    [InvalidRequestError("bad", param="size", code="invalid_value"), RateLimitError("slow down")],
)
def test_error_schema_matches_what_the_gateway_renders(error: InvalidRequestError) -> None:
    ErrorResponse.model_validate(error_body(error))
