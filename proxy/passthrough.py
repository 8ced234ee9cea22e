"""Forward any other `/v1/...` call to the pass-through provider, streamed both ways.

Bodies are never buffered whole: the client's body is streamed upstream chunk by chunk (counted
against the body limit as it goes) and the upstream's answer is streamed back the same way.
Hop-by-hop headers are stripped in both directions, the client's credential is replaced by the
upstream key, and the audit record is written once the upstream's status is known, before the first
byte of the answer is released. The upstream key never comes back: the answer is requested
unencoded (`Accept-Encoding: identity`) so that an upstream echoing the key (in a header or the
body) has it masked on the way through (`proxy.redact`), lengths unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from .errors import ImagegateError, PayloadTooLargeError, UpstreamConnectionError, UpstreamTimeoutError
from .exchange import Exchange
from .redact import StreamMasker, mask_text, usable

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
}
#: Request headers never forwarded: the client's own credential and imagegate's control headers.
PRIVATE = {"authorization", "x-imagegate-user"}


def forwardable(headers: "aiohttp.typedefs.LooseHeaders", drop: set[str]) -> dict[str, str]:
    connection_tokens = {
        token.strip().lower() for token in dict(headers).get("Connection", "").split(",") if token.strip()
    }
    return {
        key: value
        for key, value in dict(headers).items()
        if key.lower() not in drop and key.lower() not in connection_tokens
    }


def _imagegate_cause(exc: BaseException) -> ImagegateError | None:
    """The imagegate error somewhere in an exception's chain (causes and contexts), if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ImagegateError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


class Passthrough:
    def __init__(self, *, base_url: str, api_key: str | None, timeout_s: float, max_body_bytes: int) -> None:
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self.timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=timeout_s)
        self.max_body_bytes = max_body_bytes
        self._session: aiohttp.ClientSession | None = None
        self.trace_configs: list[Any] = []  # OpenTelemetry client spans when tracing is on

    async def start(self) -> None:
        # auto_decompress=False: bytes go through exactly as the upstream sent them.
        self._session = aiohttp.ClientSession(
            timeout=self.timeout, auto_decompress=False, trace_configs=list(self.trace_configs) or None
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _body(self, request: web.Request) -> AsyncIterator[bytes]:
        total = 0
        async for chunk in request.content.iter_chunked(64 * 1024):
            total += len(chunk)
            if total > self.max_body_bytes:
                raise PayloadTooLargeError(f"The request body is larger than the limit of {self.max_body_bytes} bytes.")
            yield chunk

    async def forward(
        self, request: web.Request, exchange: Exchange, audit: Callable[[int], Awaitable[None]]
    ) -> web.StreamResponse:
        assert self._session is not None
        tail = request.path.removeprefix("/v1")
        url = f"{self.base_url}{tail}"
        headers = forwardable(request.headers, HOP_BY_HOP | PRIVATE)
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
            # An encoded answer could not be searched for an echoed key (`_stream_back`).
            headers = {key: value for key, value in headers.items() if key.lower() != "accept-encoding"}
            headers["Accept-Encoding"] = "identity"
        has_body = request.body_exists
        raise_from: BaseException | None = None
        try:
            if request.content_length is not None and request.content_length > self.max_body_bytes:
                raise PayloadTooLargeError(f"The request body is larger than the limit of {self.max_body_bytes} bytes.")
            upstream = await self._session.request(
                request.method,
                url,
                params=request.query,
                headers=headers,
                data=self._body(request) if has_body else None,
                allow_redirects=False,
            )
        except PayloadTooLargeError as exc:
            error: ImagegateError = exc
        except asyncio.TimeoutError as exc:
            error = UpstreamTimeoutError("The pass-through upstream did not answer in time.")
            raise_from = exc
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            # The client's body is streamed by `_body`; a body over the limit surfaces here, wrapped
            # by aiohttp's client, and must stay the client's 413, not become the upstream's 502.
            error = _imagegate_cause(exc) or UpstreamConnectionError(f"The pass-through upstream failed: {type(exc).__name__}.")
            raise_from = exc
        else:
            return await self._stream_back(request, upstream, exchange, audit)
        exchange.fail(error)
        await audit(error.status)
        error.headers["X-Imagegate-Audit-Id"] = exchange.audit_id or ""  # rendered by the error middleware
        raise error from raise_from

    async def _stream_back(
        self,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        exchange: Exchange,
        audit: Callable[[int], Awaitable[None]],
    ) -> web.StreamResponse:
        secrets = usable([self._api_key, f"Bearer {self._api_key}" if self._api_key else None])
        masker = StreamMasker(secrets)
        async with upstream:
            await audit(upstream.status)
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for key, value in forwardable(upstream.headers, HOP_BY_HOP).items():
                response.headers[key] = mask_text(value, secrets)
            response.headers["X-Imagegate-Audit-Id"] = exchange.audit_id or ""
            if upstream.content_length is not None:
                response.content_length = upstream.content_length  # masking keeps every length
            await response.prepare(request)
            async for chunk in upstream.content.iter_chunked(64 * 1024):
                await response.write(masker.feed(chunk))
            await response.write(masker.flush())
            await response.write_eof()
            return response
