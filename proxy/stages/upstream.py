"""Forward the normalised request to its provider and keep the normalised result.

The provider adapter does the wire work (and polling, for asynchronous APIs) and raises imagegate's
`Upstream*` errors; this stage only picks the provider and records the upstream outcome.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..adapters.base import Provider
from ..exchange import Exchange
from ..metrics import Metrics
from ..pipeline import BaseStage


class Upstream(BaseStage):
    name = "upstream"

    def __init__(self, providers: Mapping[str, Provider], metrics: Metrics | None = None) -> None:
        self.providers = providers
        self.metrics = metrics

    async def on_request(self, exchange: Exchange) -> None:
        assert exchange.request is not None and exchange.provider is not None
        provider = self.providers[exchange.provider]
        result = await provider.generate(exchange.request)
        exchange.result = result
        if self.metrics is not None:
            self.metrics.upstream_latency.labels(provider.name).observe(result.upstream_latency_s)
