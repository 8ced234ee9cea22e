"""What every HTTP provider adapter shares: one client session, wire errors mapped to imagegate's error
tree, and image URLs fetched under the SSRF guard.

`ProviderHTTP.call` sends one request and returns status, headers and body, read to the end under a
size cap; a timeout, a broken connection or a 5xx become `Upstream*` errors, and a 4xx the
provider's own answer (`UpstreamStatusError`, passed back unchanged where the client speaks the same
wire format, except that any credential the request carried is masked out of it: `proxy.redact`).

`ImageFetcher` fetches the images providers return as URLs: only from the provider's host allow-list
(`image_url_hosts`, where `*.example.com` admits subdomains), only to public addresses (checked after
DNS resolution and on every redirect, by `proxy.fetch.SafeFetcher`), with size and time caps. A
refusal is an `UpstreamBadResponseError` that says which rule refused the URL; the image is never
handed to the client.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable
from typing import Any

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from ..errors import (
    UpstreamBadResponseError,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeoutError,
)
from ..exchange import sniff_media_type
from ..fetch import AddressPolicy, FetchError, SafeFetcher, UnsafeURLError, public_only
from ..redact import credentials_in, mask


def host_allowed(host: str, patterns: Iterable[str]) -> bool:
    host = host.lower().rstrip(".")
    for pattern in patterns:
        pattern = pattern.lower()
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]) and host != pattern[2:]:
                return True
        elif host == pattern:
            return True
    return False


class ImageFetcher(SafeFetcher):
    """`SafeFetcher` with a host allow-list that admits `*.` subdomain patterns."""

    def __init__(self, provider: str, *, hosts: list[str], policy: AddressPolicy = public_only, **kwargs: Any) -> None:
        super().__init__(policy=policy, **kwargs)
        self.provider = provider
        self.host_patterns = set(hosts)

    def check_url(self, url: URL) -> None:
        super().check_url(url)
        if not host_allowed(url.host or "", self.host_patterns):
            raise UnsafeURLError(
                f"The host {url.host!r} is not in the `image_url_hosts` allow-list of provider {self.provider!r}."
            )

    async def fetch_image(self, url: str) -> tuple[bytes, str]:
        """The image at `url` and its sniffed media type, or an `Upstream*` error saying why not."""
        try:
            data, _ = await self.fetch(url)
        except UnsafeURLError as exc:
            raise UpstreamBadResponseError(
                f"The image URL returned by provider {self.provider!r} was refused: {exc.message}",
                code="upstream_unsafe_image_url",
            ) from exc
        except FetchError as exc:
            raise UpstreamBadResponseError(
                f"The image URL returned by provider {self.provider!r} could not be fetched: {exc.message}",
                code="upstream_image_fetch_failed",
            ) from exc
        media_type = sniff_media_type(data)
        if media_type is None:
            raise UpstreamBadResponseError(f"Provider {self.provider!r} returned a URL that is not a PNG, JPEG or WebP image.")
        return data, media_type


#: Largest upstream answer read into memory (base64 of n large images).
MAX_UPSTREAM_BODY = 256 * 1024 * 1024


async def read_body(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, read to the end, refusing anything over `limit` bytes as soon as it is passed."""
    if response.content_length is not None and response.content_length > limit:
        raise UpstreamBadResponseError(f"The upstream answer is larger than imagegate accepts ({limit} bytes).")
    chunks: list[bytes] = []
    total = 0
    async for chunk in response.content.iter_chunked(256 * 1024):
        total += len(chunk)
        if total > limit:
            raise UpstreamBadResponseError(f"The upstream answer is larger than imagegate accepts ({limit} bytes).")
        chunks.append(chunk)
    return b"".join(chunks)



class ProviderHTTP:
    """One aiohttp session per provider, opened by `start` and closed by `close`."""

    name: str
    #: aiohttp trace configs for this provider's session (OpenTelemetry client spans when tracing).
    trace_configs: list[Any] = []

    def __init__(self, name: str, *, base_url: str, timeout_s: float, connect_timeout_s: float) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=connect_timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=self.timeout, connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
            trace_configs=list(self.trace_configs) or None,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise UpstreamError(f"provider {self.name!r} is not started")
        return self._session

    async def call(
        self, method: str, url: str, *, accept_status: tuple[int, ...] = (), **kwargs: Any
    ) -> tuple[int, CIMultiDictProxy[str], bytes]:
        """Status, headers and whole body; errors mapped (statuses in `accept_status` are returned)."""
        try:
            async with self.session.request(method, url, allow_redirects=False, **kwargs) as response:
                body = await read_body(response, MAX_UPSTREAM_BODY)
                status, headers = response.status, response.headers
        except asyncio.TimeoutError as exc:
            raise UpstreamTimeoutError(
                f"The upstream provider {self.name!r} did not answer in time ({self.timeout.total:.0f} s)."
            ) from exc
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            raise UpstreamConnectionError(
                f"The connection to the upstream provider {self.name!r} failed: {type(exc).__name__}."
            ) from exc
        if status in accept_status or status < 400:
            return status, headers, body
        if status >= 500:
            raise UpstreamError(f"The upstream provider {self.name!r} failed with HTTP {status}.", code="upstream_error")
        # The provider's own error goes back to the client: never with the key we sent it echoed inside.
        body = mask(body, credentials_in(kwargs.get("headers")))
        raise UpstreamStatusError(status, body, headers.get("Content-Type", "application/json"), f"upstream answered HTTP {status}")



class ImageURLProviderHTTP(ProviderHTTP):
    """`ProviderHTTP` for providers that may answer with image URLs (OpenAI, BFL, fal, Replicate):
    the key and the guarded `ImageFetcher` (host allow-list, public addresses only, size and time
    caps) with its own session, started and closed with the provider's."""

    def __init__(
        self,
        name: str,
        *,
        base_url: str,
        api_key: str | None,
        timeout_s: float = 120.0,
        connect_timeout_s: float = 10.0,
        image_url_hosts: list[str] | None = None,
        address_policy: AddressPolicy = public_only,
        image_max_bytes: int = 50 * 1024 * 1024,
        image_fetch_timeout_s: float = 30.0,
        resolver: Any = None,
    ) -> None:
        super().__init__(name, base_url=base_url, timeout_s=timeout_s, connect_timeout_s=connect_timeout_s)
        self._api_key = api_key
        self.image_url_hosts = list(image_url_hosts or [])
        self.fetcher = ImageFetcher(
            name, hosts=self.image_url_hosts, policy=address_policy, max_bytes=image_max_bytes,
            timeout_s=image_fetch_timeout_s, resolver=resolver,
        )

    async def start(self) -> None:
        await super().start()
        await self.fetcher.start()

    async def close(self) -> None:
        await self.fetcher.close()
        await super().close()


class JobProviderHTTP(ImageURLProviderHTTP):
    """An `ImageURLProviderHTTP` that runs jobs (BFL, fal, Replicate): adds the polling cadence and
    the whole-job deadline."""

    def __init__(self, name: str, *, timeout_s: float = 300.0, poll_interval_s: float = 0.5, **options: Any) -> None:
        super().__init__(name, timeout_s=timeout_s, **options)
        #: The whole job, submit to result, must finish within this.
        self.total_timeout_s = timeout_s
        self.poll_interval_s = poll_interval_s


def megapixels(width: int, height: int) -> float:
    return round(width * height / 1_000_000, 3)


def cost_hint(*, images: int, width: int | None = None, height: int | None = None, **extra: Any) -> dict[str, Any]:
    """What the budget stage may read to price a result: images, megapixels, credits..."""
    hint: dict[str, Any] = {"images": images}
    if width and height:
        hint["width"], hint["height"] = width, height
        hint["megapixels"] = megapixels(width, height)
        hint["billed_megapixels"] = max(1, math.ceil(width * height / (1024 * 1024)))
    hint.update({key: value for key, value in extra.items() if value is not None})
    return hint
