"""A stage that is not configured: it records `skipped` in the audit trail, never a fake verdict."""

from __future__ import annotations

from ..exchange import Exchange
from ..pipeline import BaseStage


class SkippedStage(BaseStage):
    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason

    async def on_request(self, exchange: Exchange) -> None:
        exchange.skip(self.name, self.reason)
