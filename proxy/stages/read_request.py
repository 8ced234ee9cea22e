"""Read and parse the request body (after authentication) and route the model to a provider.

Wire formats stay in the API surface: this stage only calls the reader the handler put on the
exchange. An unknown model is refused here, before any policy stage or upstream call.
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import ModelNotFoundError
from ..exchange import Exchange
from ..pipeline import BaseStage


class ReadRequest(BaseStage):
    name = "read_request"

    def __init__(self, provider_for: Callable[[str], str | None]) -> None:
        self._provider_for = provider_for

    async def on_request(self, exchange: Exchange) -> None:
        assert exchange.read_request is not None, "the handler must set exchange.read_request"
        request = await exchange.read_request()
        exchange.request = request
        if exchange.caller is not None and exchange.caller.end_user is None:
            exchange.caller.end_user = request.user
        provider = self._provider_for(request.model)
        if provider is None:
            raise ModelNotFoundError(
                f"The model '{request.model}' does not exist or is not served by this gateway.",
                param="model",
            )
        exchange.provider = provider
