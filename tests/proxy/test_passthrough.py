"""Pass-through of other `/v1/` paths: streamed both ways, hop-by-hop headers stripped, key injected.

The streaming tests use a handshake that deadlocks (and times out) if the proxy buffers a body
whole: the sender waits for the receiver to see the first chunk before it sends the rest.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import aiohttp
from aiohttp import web

from proxy.app import GATEWAY
from proxy.stores.audit import AuditQuery
from tests.conftest import TENANT_KEY, make_settings

AUTH = {"Authorization": f"Bearer {TENANT_KEY}"}
CHUNK = b"x" * (256 * 1024)


async def test_upload_is_streamed_not_buffered(tmp_path: Path, fake_openai, start_gateway, upstream_key: str) -> None:
    fake, upstream_url = fake_openai
    upstream_saw_first_chunk = asyncio.Event()
    seen: dict[str, object] = {}

    async def receive(request: web.Request) -> web.Response:
        digest = hashlib.sha256()
        total = 0
        async for chunk in request.content.iter_any():
            total += len(chunk)
            digest.update(chunk)
            upstream_saw_first_chunk.set()
        seen["headers"] = dict(request.headers)
        seen["query"] = dict(request.query)
        return web.json_response({"bytes": total, "sha256": digest.hexdigest()})

    fake.handler = receive
    server, base = await start_gateway(make_settings(tmp_path, upstream_url))
    expected = hashlib.sha256()

    async def body():
        expected.update(CHUNK)
        yield CHUNK
        # If imagegate buffered the whole upload, the upstream would never see this first chunk.
        await asyncio.wait_for(upstream_saw_first_chunk.wait(), timeout=5)
        for _ in range(40):  # about 10 MB more
            expected.update(CHUNK)
            yield CHUNK

    headers = {**AUTH, "Connection": "keep-alive, X-Hop-Only", "X-Hop-Only": "secret", "X-Custom": "kept"}
    async with aiohttp.ClientSession() as session:
        async with session.post(base + "/files?purpose=test", data=body(), headers=headers) as response:
            assert response.status == 200
            answer = await response.json()
            audit_id = response.headers.get("X-Imagegate-Audit-Id")
    assert answer == {"bytes": 41 * len(CHUNK), "sha256": expected.hexdigest()}
    forwarded = seen["headers"]
    assert isinstance(forwarded, dict)
    assert forwarded["Authorization"] == f"Bearer {upstream_key}"
    assert "X-Hop-Only" not in forwarded and forwarded["X-Custom"] == "kept"
    assert seen["query"] == {"purpose": "test"}
    records = await server.app[GATEWAY].audit.query(AuditQuery())
    assert [r["route"] for r in records] == ["/v1/files"] and records[0]["operation"] == "passthrough"
    assert audit_id == records[0]["id"]


async def test_download_is_streamed_not_buffered(tmp_path: Path, fake_openai, start_gateway, upstream_key: str) -> None:
    fake, upstream_url = fake_openai
    client_saw_first_chunk = asyncio.Event()

    async def send(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await response.prepare(request)
        await response.write(CHUNK)
        # If imagegate buffered the whole answer, the client would never see this first chunk.
        await asyncio.wait_for(client_saw_first_chunk.wait(), timeout=5)
        for _ in range(40):
            await response.write(CHUNK)
        await response.write_eof()
        return response

    fake.handler = send
    _, base = await start_gateway(make_settings(tmp_path, upstream_url))
    async with aiohttp.ClientSession() as session:
        async with session.get(base + "/files/big/content", headers=AUTH) as response:
            assert response.status == 200
            total = len(await response.content.readany())
            client_saw_first_chunk.set()
            async for chunk in response.content.iter_any():
                total += len(chunk)
    assert total == 41 * len(CHUNK)


async def test_passthrough_requires_a_tenant_key(tmp_path: Path, fake_openai, start_gateway, upstream_key: str) -> None:
    fake, upstream_url = fake_openai
    called = False

    async def models(request: web.Request) -> web.Response:
        nonlocal called
        called = True
        return web.json_response({"data": []})

    fake.handler = models
    _, base = await start_gateway(make_settings(tmp_path, upstream_url))
    async with aiohttp.ClientSession() as session:
        async with session.get(base + "/models", headers={"Authorization": "Bearer wrong"}) as response:
            assert response.status == 401
            assert (await response.json())["error"]["code"] == "invalid_api_key"
    assert not called


async def test_no_passthrough_provider_gives_clear_404(tmp_path: Path, start_gateway) -> None:
    _, base = await start_gateway(make_settings(tmp_path))
    async with aiohttp.ClientSession() as session:
        async with session.get(base + "/models", headers=AUTH) as response:
            assert response.status == 404
            assert (await response.json())["error"]["code"] == "unknown_url"
