"""The stage chain: order, stopping, on_response for every entered stage, the failure policy."""

from __future__ import annotations

from policies.decisions import Action
from proxy.errors import ContentPolicyError, StageFailedError
from proxy.exchange import Exchange
from proxy.pipeline import BaseStage, Pipeline


def make_exchange() -> Exchange:
    return Exchange(route="/v1/images/generations", operation="generate")


class Recorder(BaseStage):
    def __init__(self, name: str, log: list[str], *, fail: Exception | None = None, safety: bool = False) -> None:
        self.name = name
        self.log = log
        self.fail = fail
        self.safety = safety

    async def on_request(self, exchange: Exchange) -> None:
        self.log.append(f"{self.name}.request")
        if self.fail is not None:
            raise self.fail

    async def on_response(self, exchange: Exchange) -> None:
        self.log.append(f"{self.name}.response")


async def test_hooks_run_in_chain_order() -> None:
    log: list[str] = []
    exchange = make_exchange()
    await Pipeline([Recorder("a", log), Recorder("b", log)]).run(exchange)
    assert log == ["a.request", "b.request", "a.response", "b.response"]
    assert set(exchange.timings) == {"a.on_request", "b.on_request", "a.on_response", "b.on_response"}


async def test_a_stop_skips_later_stages_but_entered_stages_see_on_response() -> None:
    log: list[str] = []
    exchange = make_exchange()
    stages = [Recorder("a", log), Recorder("b", log, fail=ContentPolicyError("no")), Recorder("upstream", log)]
    await Pipeline(stages).run(exchange)
    assert log == ["a.request", "b.request", "a.response", "b.response"]
    assert isinstance(exchange.error, ContentPolicyError)


async def test_failed_safety_stage_fails_closed_by_default() -> None:
    log: list[str] = []
    exchange = make_exchange()
    stages = [Recorder("prompt_filter", log, fail=RuntimeError("model crashed"), safety=True), Recorder("upstream", log)]
    await Pipeline(stages).run(exchange)
    assert isinstance(exchange.error, StageFailedError) and exchange.error.status == 503
    assert "upstream.request" not in log
    assert exchange.decisions[0].action is Action.ERROR and "model crashed" in exchange.decisions[0].reason


async def test_failed_safety_stage_fails_open_only_when_configured() -> None:
    log: list[str] = []
    exchange = make_exchange()
    stages = [Recorder("prompt_filter", log, fail=RuntimeError("boom"), safety=True), Recorder("upstream", log)]
    await Pipeline(stages, {"prompt_filter": "open"}).run(exchange)
    assert exchange.error is None
    assert "upstream.request" in log
    assert exchange.decisions[0].action is Action.ERROR and exchange.decisions[0].details == {"fail_open": True}


async def test_fail_open_never_applies_to_non_safety_stages() -> None:
    log: list[str] = []
    exchange = make_exchange()
    await Pipeline([Recorder("upstream", log, fail=RuntimeError("bug"))], {"upstream": "open"}).run(exchange)
    assert isinstance(exchange.error, StageFailedError)
