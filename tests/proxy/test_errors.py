"""Bad input and upstream faults: each gets a clear OpenAI-shaped error and an audit record."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy.app import GATEWAY
from tests.conftest import TENANT_KEY, make_settings

AUTH = {"Authorization": f"Bearer {TENANT_KEY}"}


async def post(base_url: str, path: str, **kwargs: Any) -> tuple[int, dict[str, Any], dict[str, str]]:
    headers = {**AUTH, **kwargs.pop("headers", {})}
    async with aiohttp.ClientSession() as session:
        async with session.post(base_url + path, headers=headers, **kwargs) as response:
            return response.status, await response.json(content_type=None), dict(response.headers)


async def audit_of(server, headers: dict[str, str]) -> dict[str, Any]:
    record = await server.app[GATEWAY].audit.get(headers["X-Imagegate-Audit-Id"])
    assert record is not None, "every exchange must leave an audit record"
    return record


def assert_openai_error(body: dict[str, Any], code: str) -> None:
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    assert body["error"]["type"]


async def test_malformed_json(tmp_path: Path, start_gateway) -> None:
    server, base = await start_gateway(make_settings(tmp_path))
    status, body, headers = await post(base, "/images/generations", data=b"{not json", headers={"Content-Type": "application/json"})
    assert status == 400
    assert_openai_error(body, "invalid_json")
    record = await audit_of(server, headers)
    assert record["tenant"] == "acme" and record["error"]["code"] == "invalid_json"


@pytest.mark.parametrize(
    ("payload", "param"),
    [({"model": "demo"}, "prompt"), ({"prompt": "x", "n": 99, "model": "demo"}, "n"), ({"prompt": "x", "size": "big", "model": "demo"}, "size"),
     ({"prompt": "x", "output_format": "gif", "model": "demo"}, "output_format")],
)
async def test_invalid_fields_name_the_parameter(tmp_path: Path, start_gateway, payload: dict[str, Any], param: str) -> None:
    server, base = await start_gateway(make_settings(tmp_path))
    status, body, headers = await post(base, "/images/generations", json=payload)
    assert status == 400
    assert body["error"]["param"] == param
    assert (await audit_of(server, headers))["status"] == 400


async def test_unknown_model(tmp_path: Path, start_gateway) -> None:
    server, base = await start_gateway(make_settings(tmp_path))
    status, body, headers = await post(base, "/images/generations", json={"prompt": "a cat", "model": "no-such-model"})
    assert status == 404
    assert_openai_error(body, "model_not_found")
    assert "no-such-model" in body["error"]["message"]
    assert (await audit_of(server, headers))["model"] == "no-such-model"


async def test_oversized_body(tmp_path: Path, start_gateway) -> None:
    server, base = await start_gateway(make_settings(tmp_path, server={"data_dir": str(tmp_path / "d"), "max_body_bytes": 2000}))
    status, body, headers = await post(base, "/images/generations", json={"prompt": "x" * 5000, "model": "demo"})
    assert status == 413
    assert_openai_error(body, "payload_too_large")
    assert (await audit_of(server, headers))["error"]["code"] == "payload_too_large"


async def test_oversized_chunked_body_is_cut_off_while_reading(tmp_path: Path, start_gateway) -> None:
    server, base = await start_gateway(make_settings(tmp_path, server={"data_dir": str(tmp_path / "d"), "max_body_bytes": 2000}))

    async def chunks():
        for _ in range(10):
            yield b" " * 1000

    status, body, headers = await post(base, "/images/generations", data=chunks(), headers={"Content-Type": "application/json"})
    assert status == 413
    assert (await audit_of(server, headers))["status"] == 413


async def test_edit_with_non_image_part(tmp_path: Path, start_gateway) -> None:
    server, base = await start_gateway(make_settings(tmp_path))
    form = aiohttp.FormData()
    form.add_field("prompt", "x")
    form.add_field("model", "demo")
    form.add_field("image", b"#!/bin/sh\necho not an image", filename="a.png", content_type="image/png")
    status, body, headers = await post(base, "/images/edits", data=form)
    assert status == 400
    assert_openai_error(body, "invalid_image")
    assert (await audit_of(server, headers))["status"] == 400


async def test_edit_without_image(tmp_path: Path, start_gateway) -> None:
    server, base = await start_gateway(make_settings(tmp_path))
    form = aiohttp.FormData(default_to_multipart=True)
    form.add_field("prompt", "x")
    form.add_field("model", "demo")
    status, body, _ = await post(base, "/images/edits", data=form)
    assert status == 400 and body["error"]["param"] == "image"


async def test_missing_key_is_audited(tmp_path: Path, start_gateway) -> None:
    server, base = await start_gateway(make_settings(tmp_path))
    async with aiohttp.ClientSession() as session:
        async with session.post(base + "/images/generations", json={"prompt": "a cat", "model": "demo"}) as response:
            assert response.status == 401
            body = await response.json()
            record = await server.app[GATEWAY].audit.get(response.headers["X-Imagegate-Audit-Id"])
    assert body["error"]["code"] == "missing_api_key"
    assert record is not None and record["tenant"] is None and record["outcome"] == "rejected"


async def faulty_gateway(tmp_path: Path, fake_openai, start_gateway, handler, **provider: Any):
    fake, upstream_url = fake_openai
    fake.handler = handler
    settings = make_settings(tmp_path, upstream_url)
    config = settings.providers["openai"].model_copy(update=provider)
    settings = settings.model_copy(update={"providers": {**settings.providers, "openai": config}})
    return await start_gateway(settings)


async def test_upstream_timeout(tmp_path: Path, fake_openai, start_gateway, upstream_key: str) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(3)
        return web.json_response({"data": []})

    server, base = await faulty_gateway(tmp_path, fake_openai, start_gateway, slow, timeout_s=0.3)
    status, body, headers = await post(base, "/images/generations", json={"prompt": "a cat", "model": "gpt-image-1"})
    assert status == 504
    assert_openai_error(body, "upstream_timeout")
    record = await audit_of(server, headers)
    assert record["outcome"] == "error" and record["provider"] == "openai"


async def test_upstream_5xx(tmp_path: Path, fake_openai, start_gateway, upstream_key: str) -> None:
    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=503, text="<html>down</html>")

    server, base = await faulty_gateway(tmp_path, fake_openai, start_gateway, broken)
    status, body, headers = await post(base, "/images/generations", json={"prompt": "a cat", "model": "gpt-image-1"})
    assert status == 502
    assert_openai_error(body, "upstream_error")
    assert "503" in body["error"]["message"]
    assert (await audit_of(server, headers))["error"]["code"] == "upstream_error"


async def test_upstream_connection_reset(tmp_path: Path, fake_openai, start_gateway, upstream_key: str) -> None:
    async def reset(request: web.Request) -> web.Response:
        await request.read()
        assert request.transport is not None
        request.transport.abort()
        await asyncio.sleep(0.2)
        return web.Response()

    server, base = await faulty_gateway(tmp_path, fake_openai, start_gateway, reset)
    status, body, headers = await post(base, "/images/generations", json={"prompt": "a cat", "model": "gpt-image-1"})
    assert status == 502
    assert_openai_error(body, "upstream_connection_error")
    assert (await audit_of(server, headers))["status"] == 502


async def test_upstream_invalid_image_data(tmp_path: Path, fake_openai, start_gateway, upstream_key: str) -> None:
    async def garbage(request: web.Request) -> web.Response:
        return web.json_response({"created": 1, "data": [{"b64_json": "aGVsbG8="}]})

    server, base = await faulty_gateway(tmp_path, fake_openai, start_gateway, garbage)
    status, body, headers = await post(base, "/images/generations", json={"prompt": "a cat", "model": "gpt-image-1"})
    assert status == 502
    assert_openai_error(body, "upstream_bad_response")


async def test_upstream_4xx_error_passes_through_unchanged(tmp_path: Path, fake_openai, start_gateway, upstream_key: str) -> None:
    error = {"error": {"message": "Your request was rejected by the safety system.", "type": "image_generation_user_error",
                       "param": None, "code": "moderation_blocked"}}

    async def refused(request: web.Request) -> web.Response:
        return web.json_response(error, status=400)

    server, base = await faulty_gateway(tmp_path, fake_openai, start_gateway, refused)
    status, body, headers = await post(base, "/images/generations", json={"prompt": "a cat", "model": "gpt-image-1"})
    assert status == 400 and body == error
    assert (await audit_of(server, headers))["status"] == 400


async def test_audit_failure_withholds_the_result(tmp_path: Path, start_gateway) -> None:
    server, base = await start_gateway(make_settings(tmp_path))
    store = server.app[GATEWAY].audit

    async def broken_append(record: dict[str, Any]) -> int:
        raise OSError("disk full")

    store.append = broken_append  # type: ignore[method-assign]
    status, body, _ = await post(base, "/images/generations", json={"prompt": "a cat", "model": "demo"})
    assert status == 503
    assert_openai_error(body, "audit_unavailable")
    assert "b64_json" not in json.dumps(body)


async def test_large_upstream_answer_is_read_whole(tmp_path: Path, fake_openai, start_gateway, upstream_key: str) -> None:
    fake, _ = fake_openai
    fake.image_side, fake.noise = 700, True  # about 2 MB of base64 per image, in many TCP segments
    server, base = await faulty_gateway(tmp_path, fake_openai, start_gateway, None)
    status, body, _ = await post(base, "/images/generations", json={"prompt": "a cat", "model": "gpt-image-1", "n": 2})
    assert status == 200 and len(body["data"]) == 2
