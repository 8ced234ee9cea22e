"""The narrow interface every upstream provider implements.

A provider turns a normalised `GenerationRequest` into a normalised `GenerationResult`, and turns the
failures of its transport into imagegate's own error tree (`proxy.errors.Upstream*`), so that the
pipeline can report them in the client's provider shape. Providers never see tenants or policies.
Asynchronous upstream APIs (submit, then poll) are polled inside `generate`: to the pipeline every
provider answers with finished images.

`UPSTREAM_STARTED` lets an asynchronous job (`proxy.jobs`) learn that its exchange has passed every
request stage and reached the upstream, so the client's submit can be answered with a job id while
the upstream works: every `generate` announces itself there before it runs (a no-op outside jobs).
"""

from __future__ import annotations

import abc
import functools
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from ..exchange import GenerationRequest, GenerationResult

#: Called (if set) when a provider's `generate` starts; set by `proxy.jobs` around a job's pipeline.
UPSTREAM_STARTED: ContextVar[Callable[[], None] | None] = ContextVar("imagegate_upstream_started", default=None)


def _announcing(generate: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(generate)
    async def announced(self: Provider, request: GenerationRequest) -> GenerationResult:
        notify = UPSTREAM_STARTED.get()
        if notify is not None:
            notify()
        return await generate(self, request)

    announced.__imagegate_announces__ = True  # type: ignore[attr-defined]
    return announced


class Provider(abc.ABC):
    #: The configured provider name (the key under `providers:` in the config).
    name: str

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        generate = cls.__dict__.get("generate")
        if generate is not None and not getattr(generate, "__imagegate_announces__", False):
            if not getattr(generate, "__isabstractmethod__", False):
                cls.generate = _announcing(generate)  # type: ignore[method-assign]

    @abc.abstractmethod
    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """Send the request upstream (polling if the API is asynchronous) and return the images."""

    async def start(self) -> None:
        """Open connections; called once when the app starts."""

    async def close(self) -> None:
        """Release connections; called once when the app stops."""
