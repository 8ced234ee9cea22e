"""Fetch images from URLs without becoming a way into the private network (SSRF).

Every address a URL leads to is checked before a connection is made: IP literals at once, host
names after DNS resolution (inside the connector's resolver, so the address checked is the address
connected to; no window for DNS rebinding), and every redirect hop again (redirects are followed by
hand, never by the HTTP client). Only public (globally routable) addresses pass by default; sizes
and times are capped. Refusals are `UnsafeURLError`s with a message saying which rule refused.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable
import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from .errors import InvalidRequestError

AddressPolicy = Callable[[ipaddress.IPv4Address | ipaddress.IPv6Address], bool]


def public_only(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Globally routable unicast addresses only: no loopback, private, link-local, CGNAT, multicast."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


class UnsafeURLError(InvalidRequestError):
    code = "unsafe_url"


class FetchError(InvalidRequestError):
    code = "fetch_failed"


class _BlockedAddress(OSError):
    pass


class GuardedResolver(AbstractResolver):
    """Resolves like the default resolver, then refuses hosts with any address the policy refuses."""

    def __init__(self, policy: AddressPolicy, inner: AbstractResolver | None = None) -> None:
        self.policy = policy
        self.inner = inner or ThreadedResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self.inner.resolve(host, port, family)
        for result in results:
            address = ipaddress.ip_address(result["host"])
            if not self.policy(address):
                raise _BlockedAddress(f"{host} resolves to {address}, which is not a public address")
        return results

    async def close(self) -> None:
        await self.inner.close()


class SafeFetcher:
    def __init__(
        self,
        *,
        policy: AddressPolicy = public_only,
        max_bytes: int = 50 * 1024 * 1024,
        timeout_s: float = 20.0,
        max_redirects: int = 3,
        allowed_hosts: set[str] | None = None,
        resolver: AbstractResolver | None = None,
    ) -> None:
        self.policy = policy
        self.max_bytes = max_bytes
        self.timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=min(10.0, timeout_s))
        self.max_redirects = max_redirects
        self.allowed_hosts = allowed_hosts
        self._resolver = resolver
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(resolver=GuardedResolver(self.policy, self._resolver), use_dns_cache=False)
        self._session = aiohttp.ClientSession(connector=connector, timeout=self.timeout, auto_decompress=True)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def check_url(self, url: URL) -> None:
        """Refuse a URL by its form alone (scheme, host allow-list, IP literal)."""
        if url.scheme not in ("http", "https") or not url.host:
            raise UnsafeURLError(f"Only http and https URLs can be fetched, not {str(url)[:100]!r}.")
        if url.user or url.password:
            raise UnsafeURLError("URLs with credentials are not fetched.")
        if self.allowed_hosts is not None and url.host not in self.allowed_hosts:
            raise UnsafeURLError(f"The host {url.host!r} is not in the allow-list for image URLs.")
        try:
            address = ipaddress.ip_address(url.host.strip("[]"))
        except ValueError:
            return
        if not self.policy(address):
            raise UnsafeURLError(f"The address {address} is not a public address; it is not fetched.")

    async def fetch(self, url: str) -> tuple[bytes, str | None]:
        """The body and content type at `url`, after following at most `max_redirects` checked hops."""
        assert self._session is not None, "SafeFetcher.start() was not called"
        current = URL(url)
        for _ in range(self.max_redirects + 1):
            self.check_url(current)
            try:
                async with self._session.get(current, allow_redirects=False) as response:
                    if response.status in (301, 302, 303, 307, 308):
                        location = response.headers.get("Location")
                        if not location:
                            raise FetchError("A redirect without a Location header.")
                        current = current.join(URL(location))
                        continue
                    if response.status != 200:
                        raise FetchError(f"Fetching {current.host} gave HTTP {response.status}.")
                    return await self._read(response), response.headers.get("Content-Type")
            except aiohttp.ClientConnectorError as exc:
                if isinstance(exc.os_error, _BlockedAddress) or isinstance(exc.__cause__, _BlockedAddress):
                    raise UnsafeURLError(f"{exc.os_error}; it is not fetched.") from exc
                raise FetchError(f"Could not connect to {current.host}.") from exc
            except asyncio.TimeoutError as exc:
                raise FetchError(f"Fetching from {current.host} took longer than {self.timeout.total:.0f} s.") from exc
            except aiohttp.ClientError as exc:
                raise FetchError(f"Fetching from {current.host} failed: {type(exc).__name__}.") from exc
        raise FetchError(f"More than {self.max_redirects} redirects.")

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        if response.content_length is not None and response.content_length > self.max_bytes:
            raise FetchError(f"The resource is larger than {self.max_bytes} bytes.")
        chunks: list[bytes] = []
        total = 0
        async for chunk in response.content.iter_chunked(256 * 1024):
            total += len(chunk)
            if total > self.max_bytes:
                raise FetchError(f"The resource is larger than {self.max_bytes} bytes.")
            chunks.append(chunk)
        return b"".join(chunks)

