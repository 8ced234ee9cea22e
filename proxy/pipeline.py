"""The stage chain that every image request travels through.

A stage is a small object with two async hooks, `on_request` and `on_response`. The pipeline calls
`on_request` on each stage in order until one stops the exchange (`exchange.fail(...)`); the upstream
call is itself a stage, so a stop before it costs nothing upstream. Then it calls `on_response` on
every stage whose `on_request` ran, in the same order, also when the exchange was stopped, so that a
stage can undo what it did (release a budget hold); stages that look at images simply find none.

A stage that raises `ImagegateError` stops the exchange with that error. Any other exception is a
failure of the stage itself: for a safety stage the failure policy decides (fail closed, the default,
stops the exchange with a 503; fail open records an `error` decision and goes on); for any other
stage it stops the exchange. The pipeline never lets an exception escape, so the handler can always
render a response and write the audit record.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import structlog

from policies.decisions import Action, Decision

from .errors import ImagegateError, StageFailedError
from .exchange import Exchange

log = structlog.get_logger("imagegate.pipeline")


@runtime_checkable
class Stage(Protocol):
    #: Short snake_case name used in decisions, timings, metrics and the failure policy.
    name: str

    async def on_request(self, exchange: Exchange) -> None: ...

    async def on_response(self, exchange: Exchange) -> None: ...


class BaseStage:
    """Convenience base: both hooks are no-ops, `start`/`close` manage resources."""

    name = "stage"
    #: A safety stage's failures are governed by the failure policy (closed or open).
    safety = False

    async def on_request(self, exchange: Exchange) -> None:
        return None

    async def on_response(self, exchange: Exchange) -> None:
        return None

    async def start(self) -> None:
        """Acquire resources (models, connections); called once when the app starts."""

    async def close(self) -> None:
        """Release resources; called once when the app stops."""

    async def ready(self) -> bool:
        """Whether the stage can serve requests now (readiness probe)."""
        return True


class Pipeline:
    def __init__(self, stages: Sequence[Stage], failure_policy: Mapping[str, str] | None = None) -> None:
        self.stages: list[Stage] = list(stages)
        self.failure_policy = dict(failure_policy or {})
        #: `proxy.tracing.Tracing` when traces are on: each stage hook becomes a child span.
        self.tracing: Any = None
        names = [stage.name for stage in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique: {names}")

    async def run(self, exchange: Exchange) -> None:
        entered: list[Stage] = []
        for stage in self.stages:
            if exchange.stopped:
                break
            entered.append(stage)
            await self._call(stage, "on_request", exchange)
        for stage in entered:
            await self._call(stage, "on_response", exchange)

    async def _call(self, stage: Stage, hook: str, exchange: Exchange) -> None:
        if self.tracing is not None and self.tracing.in_trace():
            with self.tracing.stage_span(f"stage {stage.name}.{hook}") as span:
                await self._timed_call(stage, hook, exchange)
                if exchange.error is not None:
                    span.set_attribute("imagegate.error.code", exchange.error.code)
            return
        await self._timed_call(stage, hook, exchange)

    async def _timed_call(self, stage: Stage, hook: str, exchange: Exchange) -> None:
        started = time.perf_counter()
        try:
            await getattr(stage, hook)(exchange)
        except ImagegateError as error:
            exchange.fail(error)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a failure of the stage itself, not a decision
            self._stage_failed(stage, hook, exchange, exc)
        finally:
            exchange.timings[f"{stage.name}.{hook}"] = time.perf_counter() - started

    def _stage_failed(self, stage: Stage, hook: str, exchange: Exchange, exc: Exception) -> None:
        fail_open = getattr(stage, "safety", False) and self.failure_policy.get(stage.name) == "open"
        log.error(
            "stage_failed",
            stage=stage.name,
            hook=hook,
            request_id=exchange.request_id,
            error=type(exc).__name__,
            detail=str(exc)[:500],
            fail_open=fail_open,
        )
        exchange.decide(
            Decision(
                stage=stage.name,
                action=Action.ERROR,
                reason=f"{type(exc).__name__}: {str(exc)[:200]}",
                details={"fail_open": fail_open},
            )
        )
        if not fail_open:
            exchange.fail(
                StageFailedError(
                    f"The {stage.name.replace('_', ' ')} stage is unavailable, so the request was "
                    "refused rather than let through unchecked. Retry later.",
                )
            )
