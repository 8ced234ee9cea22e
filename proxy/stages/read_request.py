"""Read and parse the request body (after authentication) and route the model to a provider.

Wire formats stay in the API surface: this stage only calls the reader the handler put on the
exchange. An unknown model is refused here, before any policy stage or upstream call.

Reading the body is bounded in time (`server.body_timeout_s`): a client that trickles its body in
(or stops half-way and keeps the socket open) gets a 408 instead of holding a connection and a
handler forever. A client that hangs up half-way is recorded as `client_disconnected` (499), not
as a failure of the gateway.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ..errors import ClientDisconnectedError, ModelNotFoundError, RequestTimeoutError
from ..exchange import Exchange, GenerationRequest
from ..pipeline import BaseStage


class ReadRequest(BaseStage):
    name = "read_request"

    def __init__(self, provider_for: Callable[[str], str | None], *, body_timeout_s: float = 60.0) -> None:
        self._provider_for = provider_for
        self.body_timeout_s = body_timeout_s

    async def on_request(self, exchange: Exchange) -> None:
        request = await self._read(exchange)
        exchange.request = request
        # What the body says wins over the route: a BFL, fal or Gemini "generate" route carrying
        # input images is an edit, and the audit record must say so.
        exchange.operation = request.operation
        if exchange.caller is not None and exchange.caller.end_user is None:
            exchange.caller.end_user = request.user
        provider = self._provider_for(request.model)
        if provider is None:
            raise ModelNotFoundError(
                f"The model '{request.model}' does not exist or is not served by this gateway.",
                param="model",
            )
        exchange.provider = provider

    async def _read(self, exchange: Exchange) -> GenerationRequest:
        assert exchange.read_request is not None, "the handler must set exchange.read_request"
        try:
            async with asyncio.timeout(self.body_timeout_s):
                return await exchange.read_request()
        except TimeoutError as exc:
            raise RequestTimeoutError(
                f"The request body was not received within {self.body_timeout_s:g} s. Send it again, in one go."
            ) from exc
        except ConnectionError as exc:  # aiohttp's "Connection lost" once the client has hung up
            raise ClientDisconnectedError("The client closed the connection before sending the whole request body.") from exc
