"""SSRF protection: private, loopback and link-local addresses are refused before any connection."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.test_utils import TestServer

from proxy.fetch import FetchError, SafeFetcher, UnsafeURLError, public_only

ONLY_127_0_0_1 = lambda address: str(address) == "127.0.0.1"  # noqa: E731  stands in for "the public internet"


class StaticResolver(AbstractResolver):
    """Resolves every name to fixed addresses (a DNS answer we control)."""

    def __init__(self, addresses: dict[str, str]) -> None:
        self.addresses = addresses

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        address = self.addresses[host]
        return [{"hostname": host, "host": address, "port": port, "family": socket.AF_INET, "proto": 0, "flags": 0}]

    async def close(self) -> None:
        return None


@pytest.fixture
async def origin() -> AsyncIterator[TestServer]:
    async def image(request: web.Request) -> web.Response:
        return web.Response(body=b"\x89PNG\r\n\x1a\n" + b"0" * 100, content_type="image/png")

    async def big(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for _ in range(100):
            await response.write(b"x" * 65536)
        return response

    async def to_private(request: web.Request) -> web.Response:
        raise web.HTTPFound("http://10.0.0.5/secret")

    async def to_metadata(request: web.Request) -> web.Response:
        raise web.HTTPFound("http://169.254.169.254/latest/meta-data/")

    async def to_localhost_name(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"http://internal.example:{request.url.port}/image")

    async def slow(request: web.Request) -> web.Response:
        import asyncio

        await asyncio.sleep(2)
        return web.Response(body=b"late")

    app = web.Application()
    for path, handler in {"/image": image, "/big": big, "/to-private": to_private, "/to-metadata": to_metadata,
                          "/to-name": to_localhost_name, "/slow": slow}.items():
        app.router.add_get(path, handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


async def fetcher(**kwargs) -> SafeFetcher:
    fetch = SafeFetcher(**kwargs)
    await fetch.start()
    return fetch


@pytest.mark.parametrize("address", ["127.0.0.1", "10.1.2.3", "192.168.0.1", "172.16.5.4", "169.254.169.254", "100.64.0.1",
                                     "::1", "fe80::1", "fc00::1", "::ffff:127.0.0.1", "0.0.0.0"])
def test_non_public_addresses_are_refused(address: str) -> None:
    assert not public_only(ipaddress.ip_address(address))


def test_public_addresses_pass() -> None:
    assert public_only(ipaddress.ip_address("8.8.8.8")) and public_only(ipaddress.ip_address("2606:4700::1111"))


async def test_loopback_literal_is_refused_by_default(origin: TestServer) -> None:
    fetch = await fetcher()
    with pytest.raises(UnsafeURLError, match="not a public address"):
        await fetch.fetch(str(origin.make_url("/image")))
    await fetch.close()


async def test_dns_name_resolving_to_loopback_is_refused(origin: TestServer) -> None:
    fetch = await fetcher(resolver=StaticResolver({"innocent.example": "127.0.0.1"}))
    with pytest.raises(UnsafeURLError, match="resolves to 127.0.0.1"):
        await fetch.fetch(f"http://innocent.example:{origin.port}/image")
    await fetch.close()


async def test_allowed_origin_is_fetched(origin: TestServer) -> None:
    fetch = await fetcher(policy=ONLY_127_0_0_1)
    data, content_type = await fetch.fetch(str(origin.make_url("/image")))
    assert data.startswith(b"\x89PNG") and content_type == "image/png"
    await fetch.close()


@pytest.mark.parametrize("path", ["/to-private", "/to-metadata"])
async def test_redirects_to_private_addresses_are_refused(origin: TestServer, path: str) -> None:
    fetch = await fetcher(policy=ONLY_127_0_0_1)
    with pytest.raises(UnsafeURLError):
        await fetch.fetch(str(origin.make_url(path)))
    await fetch.close()


async def test_redirect_to_a_name_resolving_privately_is_refused(origin: TestServer) -> None:
    fetch = await fetcher(policy=ONLY_127_0_0_1, resolver=StaticResolver({"internal.example": "10.9.9.9", "127.0.0.1": "127.0.0.1"}))
    with pytest.raises(UnsafeURLError, match="10.9.9.9"):
        await fetch.fetch(str(origin.make_url("/to-name")))
    await fetch.close()


async def test_oversized_and_slow_responses_are_refused(origin: TestServer) -> None:
    fetch = await fetcher(policy=ONLY_127_0_0_1, max_bytes=1_000_000, timeout_s=0.5)
    with pytest.raises(FetchError, match="larger than"):
        await fetch.fetch(str(origin.make_url("/big")))
    with pytest.raises(FetchError, match="longer than"):
        await fetch.fetch(str(origin.make_url("/slow")))
    await fetch.close()


async def test_other_schemes_and_credentials_are_refused() -> None:
    fetch = await fetcher()
    for url in ("file:///etc/passwd", "ftp://example.com/x.png", "https://user:pw@example.com/x.png"):
        with pytest.raises(UnsafeURLError):
            await fetch.fetch(url)
    await fetch.close()
