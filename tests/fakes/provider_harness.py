"""Shared pieces of the provider adapter tests: fake servers on loopback, settings naming one provider,
and counting stages that stand where the output classifier and the signer go.

Loopback is admitted only explicitly, per provider (`image_url_networks: [127.0.0.1/32]` and the
fake's host in `image_url_hosts`) or per webhook sender (a policy admitting 127.0.0.1), never by
switching the SSRF guard off.
"""

from __future__ import annotations

import io
import ipaddress
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer
from PIL import Image, PngImagePlugin

from policies.decisions import Action, Decision
from proxy.app import GATEWAY, StageDeps, default_stages
from proxy.exchange import Exchange
from proxy.pipeline import BaseStage, Stage
from proxy.settings import Settings
from tests.conftest import make_settings

SIGNED_MARK = "imagegate-test-signature"


async def serve(app: web.Application) -> tuple[TestServer, str]:
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server, str(server.make_url("")).rstrip("/")


def provider_settings(tmp_path: Path, name: str, kind: str, base_url: str, models: Sequence[str], **extra: Any) -> Settings:
    provider: dict[str, Any] = {
        "kind": kind,
        "base_url": base_url,
        "api_key_env": "IMAGEGATE_TEST_PROVIDER_KEY",
        "models": list(models),
        "timeout_s": 10,
        "poll_interval_s": 0.05,
        "image_url_hosts": ["127.0.0.1"],
        "image_url_networks": ["127.0.0.1/32"],
        **extra,
    }
    settings = make_settings(tmp_path)
    data = settings.model_dump(mode="json")
    data["providers"][name] = provider
    return Settings.model_validate(data)


def only_loopback(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return str(address) == "127.0.0.1"


@dataclass
class Counters:
    classified: int = 0
    signed: int = 0
    audits: list[dict[str, Any]] = field(default_factory=list)


class CountingClassifier(BaseStage):
    """Stands where the output classifier goes; withholds images whose prompt says `withhold`."""

    name = "output_classifier"

    def __init__(self, counters: Counters) -> None:
        self.counters = counters

    async def on_response(self, exchange: Exchange) -> None:
        if exchange.stopped or exchange.result is None:
            return
        self.counters.classified += 1
        withhold = exchange.request is not None and "withhold" in exchange.request.prompt
        for image in exchange.result.images:
            image.withheld = withhold
        exchange.decide(Decision(self.name, Action.BLOCK if withhold else Action.ALLOW, reason="test classifier"))


class CountingSigner(BaseStage):
    """Stands where the provenance stage goes: re-encodes each image as PNG with a marker text chunk."""

    name = "provenance"

    def __init__(self, counters: Counters) -> None:
        self.counters = counters

    async def on_response(self, exchange: Exchange) -> None:
        if exchange.stopped or exchange.result is None:
            return
        self.counters.signed += 1
        for image in exchange.result.images:
            if image.withheld:
                continue
            decoded = Image.open(io.BytesIO(image.data))
            info = PngImagePlugin.PngInfo()
            info.add_text(SIGNED_MARK, exchange.audit_id or "")
            buffer = io.BytesIO()
            decoded.save(buffer, format="PNG", pnginfo=info)
            image.data, image.media_type = buffer.getvalue(), "image/png"


def is_signed(data: bytes) -> bool:
    image = Image.open(io.BytesIO(data))
    return SIGNED_MARK in getattr(image, "text", {})


def counting_stages(counters: Counters, block_prompts: bool = False):
    """A stage factory: the default chain with the counting classifier and signer in place."""

    def stages(settings: Settings, deps: StageDeps) -> list[Stage]:
        chain: list[Stage] = []
        for stage in default_stages(settings, deps):
            if stage.name == "output_classifier":
                chain.append(CountingClassifier(counters))
            elif stage.name == "provenance":
                chain.append(CountingSigner(counters))
            elif stage.name == "prompt_filter" and block_prompts:
                chain.append(BlockPromptsSaying("forbidden"))
            else:
                chain.append(stage)
        return chain

    return stages


def counting_full_stages(calls: Counter[str]):
    """`full_stages` (the production chain), counting every classification and signing pass (an
    exchange with a result) in `calls`, by stage name."""
    from proxy.stages.factory import full_stages

    def stages(settings: Settings, deps: StageDeps) -> list[Stage]:
        chain = list(full_stages(settings, deps))
        for stage in chain:
            if stage.name in ("output_classifier", "provenance"):
                original = stage.on_response

                async def counted(exchange: Any, _original: Any = original, _name: str = stage.name) -> None:
                    if exchange.result is not None and not exchange.stopped:
                        calls[_name] += 1
                    await _original(exchange)

                stage.on_response = counted  # type: ignore[method-assign]
        return chain

    return stages


class BlockPromptsSaying(BaseStage):
    name = "prompt_filter"

    def __init__(self, word: str) -> None:
        self.word = word

    async def on_request(self, exchange: Exchange) -> None:
        from proxy.errors import ContentPolicyError

        assert exchange.request is not None
        if self.word in exchange.request.prompt:
            exchange.decide(Decision(self.name, Action.BLOCK, category="test", reason="blocked by the test stage"))
            raise ContentPolicyError("Your request was rejected by the safety system.")
        exchange.decide(Decision(self.name, Action.ALLOW, reason="test"))


def count_audits(app: web.Application, counters: Counters) -> None:
    """Record every audit record the app appends."""
    audit = app[GATEWAY].audit
    original = audit.append

    async def append(record: dict[str, Any]) -> int:
        counters.audits.append(record)
        return await original(record)

    audit.append = append  # type: ignore[method-assign]
