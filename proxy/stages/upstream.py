"""Forward the normalised request to its provider and keep the normalised result.

The provider adapter does the wire work (and polling, for asynchronous APIs) and raises imagegate's
`Upstream*` errors; this stage only picks the provider and records the upstream outcome.

Bytes a provider appended after an image's own end (after PNG's IEND, JPEG's EOI, beyond WebP's
RIFF size) are cut off here, before any stage looks at the image: they are no part of the picture,
and they are how polyglots travel (an image that is also a ZIP archive or an HTML page). What the
client receives, and what is signed and audited, is the image alone.
"""

from __future__ import annotations

from collections.abc import Mapping

from provenance.media import trailing_bytes

from ..adapters.base import Provider
from ..exchange import Exchange, GenerationResult
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
        strip_trailing_data(result)
        exchange.result = result
        if self.metrics is not None:
            self.metrics.upstream_latency.labels(provider.name).observe(result.upstream_latency_s)


def strip_trailing_data(result: GenerationResult) -> None:
    """Cut whatever follows each image's end marker (see the module docstring)."""
    for image in result.images:
        extra = trailing_bytes(image.data, image.media_type)
        if extra:
            image.data = image.data[: len(image.data) - extra]
