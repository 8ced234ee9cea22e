"""The narrow interface every upstream provider implements.

A provider turns a normalised `GenerationRequest` into a normalised `GenerationResult`, and turns the
failures of its transport into imagegate's own error tree (`proxy.errors.Upstream*`), so that the
pipeline can report them in the client's provider shape. Providers never see tenants or policies.
"""

from __future__ import annotations

import abc

from ..exchange import GenerationRequest, GenerationResult


class Provider(abc.ABC):
    #: The configured provider name (the key under `providers:` in the config).
    name: str

    @abc.abstractmethod
    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """Send the request upstream (polling if the API is asynchronous) and return the images."""

    async def start(self) -> None:
        """Open connections; called once when the app starts."""

    async def close(self) -> None:
        """Release connections; called once when the app stops."""
