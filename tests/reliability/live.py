"""imagegate and the fake OpenAI upstream running in a background thread, for synchronous clients.

Hypothesis and schemathesis drive blocking HTTP clients (`requests`), which cannot share the event
loop of the server they call. `live_gateway` runs both servers on their own loop in a thread and
hands back their addresses; `LiveGateway.run` executes a coroutine on that loop (reading the audit
store, for instance). Nothing here listens anywhere but 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading
from collections.abc import Callable, Coroutine, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.test_utils import TestServer

from proxy.app import GATEWAY, StageDeps, create_app, default_stages
from proxy.fetch import SafeFetcher
from proxy.pipeline import Stage
from proxy.settings import Settings
from proxy.webhooks import WebhookSender
from tests.fakes.openai_upstream import FakeOpenAI

T = TypeVar("T")
StageFactory = Callable[[Settings, StageDeps], Sequence[Stage]]


class LoopbackResolver(AbstractResolver):
    """Resolves every name to 127.0.0.1 without asking DNS (fuzzed URLs must never reach the network)."""

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        return [{"hostname": host, "host": "127.0.0.1", "port": port, "family": socket.AF_INET, "proto": 0, "flags": 0}]

    async def close(self) -> None:
        return None


def refuse_every_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return False


def offline(app: web.Application) -> None:
    """No URL a client names is ever fetched: verification URLs and webhooks are all refused."""
    gateway = app[GATEWAY]
    gateway.fetcher = SafeFetcher(policy=refuse_every_address, resolver=LoopbackResolver())
    if gateway.jobs is not None:
        gateway.jobs.webhooks = WebhookSender(policy=refuse_every_address, resolver=LoopbackResolver())


@dataclass
class LiveGateway:
    loop: asyncio.AbstractEventLoop
    app: web.Application
    fake: FakeOpenAI
    #: `http://127.0.0.1:PORT` (no path): the OpenAPI description's paths start with `/v1/...`.
    root: str

    def run(self, coroutine: Coroutine[Any, Any, T], timeout_s: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout_s)


@contextmanager
def live_gateway(
    settings_for: Callable[[str], Settings],
    *,
    stages: StageFactory = default_stages,
    configure: Callable[[web.Application], None] = offline,
) -> Iterator[LiveGateway]:
    """Start the fake upstream and imagegate (`settings_for(upstream_url)`) in a thread of their own."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="live-gateway", daemon=True)
    thread.start()
    servers: list[TestServer] = []

    async def start() -> LiveGateway:
        fake = FakeOpenAI()
        upstream = TestServer(fake.app(), host="127.0.0.1")
        await upstream.start_server()
        servers.append(upstream)
        app = create_app(settings_for(str(upstream.make_url("/v1"))), stages=stages)
        configure(app)
        gateway = TestServer(app, host="127.0.0.1")
        await gateway.start_server()
        servers.append(gateway)
        return LiveGateway(loop, app, fake, str(gateway.make_url("")).rstrip("/"))

    async def stop() -> None:
        for server in reversed(servers):
            await server.close()

    try:
        started: Future[LiveGateway] = asyncio.run_coroutine_threadsafe(start(), loop)
        yield started.result(60)
    finally:
        asyncio.run_coroutine_threadsafe(stop(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def without_demo(settings: Settings) -> Settings:
    """The settings less the demo provider: fuzzed sizes must not make it draw 4096x4096 images."""
    providers = {name: provider for name, provider in settings.providers.items() if provider.kind != "demo"}
    return settings.model_copy(update={"providers": providers})
