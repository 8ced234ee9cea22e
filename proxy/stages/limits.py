"""The limits stage: rate limits, money budgets and idempotency keys, before any money is spent.

on_request, in order:
1. `Idempotency-Key`: a retry of a request whose first response is stored gets that response again
   (`IdempotentReplay`, rendered by the handler under its own audit record; nothing generated or
   charged). A retry while the first is still in flight is refused with 409 (as Stripe does), a key
   reused for a different request with 422. On the job surfaces (BFL, fal queue, Replicate) the
   first response is the submit's answer: a retried submit gets the same job id (`proxy.jobs`).
2. Every rate counter (GCRA) and every budget (the estimated cost held against the day and month
   budgets of the tenant and the end user) in one atomic store call. A refusal is a 429 in OpenAI's
   shape with `Retry-After` and `X-RateLimit-*`; code `budget_exceeded` when money runs out.

on_response (also when a later stage or the upstream failed): the hold becomes the actual cost (a
refund of the difference; all of it when nothing was generated), and the response carries
`X-Imagegate-Cost-USD` and the remaining-budget headers. If the store cannot be reached the request
is refused with a 503 (`on_backend_failure: closed`, the default) or let through unmetered
(`open`); either way it is logged as an error and counted in
`imagegate_limit_backend_failures_total`.
"""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import structlog
from aiohttp import web
from pydantic import Field, ValidationError

from policies.decisions import Action, Decision
from policies.limits import (
    BudgetCheck,
    LimitPolicy,
    key_part,
    micros_to_usd,
    plan_budgets,
    plan_rates,
    usd_to_micros,
)
from policies.pricing import PriceTable

from ..errors import ImagegateError, InvalidRequestError, RateLimitError
from ..exchange import Exchange
from ..metrics import Metrics
from ..pipeline import BaseStage
from ..settings import ConfigError, Model, Settings, url_from
from ..stores.limits import (
    CheckOutcome,
    LimitStore,
    LimitStoreUnavailable,
    MemoryLimitStore,
    RedisLimitStore,
    StoredResponse,
)

log = structlog.get_logger("imagegate.limits")

#: Headers of the first response that a replay repeats (the rest belong to each exchange).
_REPLAYED_HEADERS = {"content-type", "x-imagegate-withheld", "x-imagegate-blurred", "x-imagegate-licence-obligations"}


class IdempotencySettings(Model):
    enabled: bool = True
    #: How long the first response is kept and replayed.
    ttl_s: float = Field(86400.0, gt=0)
    #: How long an in-flight claim holds if its replica dies before finishing.
    lease_s: float = Field(300.0, gt=0)


class LimitsSettings(Model):
    """The global `limits:` section. Tenants' own `limits:` sections are `LimitPolicy`s."""

    backend: Literal["memory", "redis"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: Name of an environment variable holding the Redis URL (when it carries a password).
    redis_url_env: str | None = None
    key_prefix: str = "imagegate:"
    timeout_s: float = Field(0.5, gt=0)
    on_backend_failure: Literal["closed", "open"] = "closed"
    #: A price table to use instead of the shipped one.
    prices: Path | None = None
    #: Price per image assumed for a model the price table does not know.
    unknown_model_usd_per_image: float = Field(0.25, ge=0)
    #: The policy of tenants without a `limits:` section of their own.
    defaults: LimitPolicy = Field(default_factory=LimitPolicy)
    idempotency: IdempotencySettings = Field(default_factory=IdempotencySettings)


class LimitsUnavailableError(ImagegateError):
    status = 503
    type = "server_error"
    code = "limits_unavailable"


class IdempotentReplay(ImagegateError):
    """Stops the chain: the handler answers with the stored first response (`render`)."""

    code = "idempotent_replay"

    def __init__(self, stored: StoredResponse, replay_of: str | None) -> None:
        super().__init__("Replay of an earlier response to the same Idempotency-Key.", status=stored.status)
        self.stored = stored
        self.replay_of = replay_of

    def render(self) -> web.Response:
        response = web.Response(body=self.stored.body, status=self.stored.status)
        for name, value in self.stored.headers.items():
            if name.lower() in _REPLAYED_HEADERS:
                response.headers[name] = value
        response.headers["Idempotent-Replayed"] = "true"
        if self.replay_of:
            response.headers["X-Imagegate-Replay-Of"] = self.replay_of
        return response


@dataclass
class _Note:
    """What on_request left for on_response and the after-audit hook."""

    budgets: list[BudgetCheck] = field(default_factory=list)
    held_micros: int | None = None
    replay: bool = False
    metered: bool = False


class LimitsStage(BaseStage):
    name = "limits"

    def __init__(
        self,
        store: LimitStore,
        policies: dict[str, LimitPolicy],
        settings: LimitsSettings | None = None,
        *,
        prices: PriceTable | None = None,
        provider_kinds: Mapping[str, str] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.policies = policies
        self.settings = settings or LimitsSettings()
        self.prices = prices or PriceTable.load(self.settings.prices)
        self.provider_kinds = dict(provider_kinds or {})
        self.metrics = metrics
        self.fail_open = self.settings.on_backend_failure == "open"

    def bind_metrics(self, metrics: Metrics) -> None:
        self.metrics = metrics

    async def start(self) -> None:
        await self.store.start()
        if not await self.store.ping():
            log.error("limit_backend_unreachable_at_start", backend=self.store.backend, fail_open=self.fail_open)

    async def close(self) -> None:
        await self.store.close()

    async def ready(self) -> bool:
        return self.fail_open or await self.store.ping()

    def policy_for(self, tenant: str) -> LimitPolicy:
        return self.policies.get(tenant, self.settings.defaults)

    # -- on_request --------------------------------------------------------------------------------

    async def on_request(self, exchange: Exchange) -> None:
        assert exchange.request is not None and exchange.caller is not None
        caller, request = exchange.caller, exchange.request
        note = exchange.notes["limits"] = _Note()
        kind = self.provider_kinds.get(exchange.provider or "", exchange.provider)
        estimate = self.prices.estimate_cost(request, kind)
        if estimate is None:
            estimate = self.settings.unknown_model_usd_per_image * request.n
        exchange.cost_estimate_usd = estimate

        idempotency_key = exchange.notes.get("idempotency_key")
        if idempotency_key and self.settings.idempotency.enabled:
            await self._begin_idempotency(exchange, note, str(idempotency_key))

        policy = self.policy_for(caller.tenant)
        if policy.empty:
            exchange.skip(self.name, "no rate limits or budgets apply to this tenant")
            return
        rates = plan_rates(
            policy, tenant=caller.tenant, user=caller.end_user, key_id=caller.key_id,
            model=request.model, operation=request.operation, images=request.n,
        )
        budgets = plan_budgets(policy, tenant=caller.tenant, user=caller.end_user, key_id=caller.key_id, now=exchange.started_at)
        hold = usd_to_micros(estimate)
        try:
            outcome = await self.store.check(rates, budgets, hold)
        except LimitStoreUnavailable as exc:
            self._backend_failed(exchange, "check", exc)
            return
        note.metered = True
        headers = limit_headers(outcome, exchange.started_at)
        exchange.response_headers.update(headers)
        if outcome.allowed:
            note.budgets, note.held_micros = budgets, hold
            exchange.decide(Decision(stage=self.name, action=Action.ALLOW, reason="within rate limits and budgets",
                                     details={"hold_usd": estimate}))
            return
        raise refusal(outcome, headers, exchange.started_at)

    async def _begin_idempotency(self, exchange: Exchange, note: _Note, key: str) -> None:
        assert exchange.caller is not None and exchange.request is not None
        settings = self.settings.idempotency
        store_key = f"idem:{{{key_part(exchange.caller.tenant)}}}:{key_part(key)}"
        token = uuid.uuid4().hex
        try:
            state = await self.store.idempotency_begin(store_key, fingerprint(exchange), token, settings.lease_s)
        except LimitStoreUnavailable as exc:
            self._backend_failed(exchange, "idempotency", exc)
            return
        if state.status == "done":
            assert state.response is not None
            note.replay = True
            replay_of = next((v for k, v in state.response.headers.items() if k.lower() == "x-imagegate-audit-id"), None)
            exchange.decide(Decision(stage=self.name, action=Action.ALLOW, reason="idempotent replay of an earlier response",
                                     details={"replay_of": replay_of, "status": state.response.status}))
            raise IdempotentReplay(state.response, replay_of)
        if state.status == "in_flight":
            raise InvalidRequestError(
                "A request with this Idempotency-Key is still being processed. Retry after it has finished.",
                status=409, code="idempotency_key_in_use", headers={"Retry-After": str(math.ceil(state.retry_after_s))},
            )
        if state.status == "mismatch":
            raise InvalidRequestError(
                "This Idempotency-Key was already used for a different request. Use a new key for a new request.",
                status=422, code="idempotency_key_reused",
            )
        async def finish(response: web.StreamResponse | None) -> None:
            await self._finish_idempotency(exchange, store_key, token, response)

        if "job_id" in exchange.notes:
            # A job submit: the job runner keeps its answer (the job id) as soon as it is released, long
            # before the job's audit record; it passes None when no job was created (`proxy.jobs`).
            exchange.notes["idempotency_finish"] = finish
        else:
            hooks: list[Any] = exchange.notes.setdefault("after_audit", [])
            hooks.append(finish)

    async def _finish_idempotency(self, exchange: Exchange, key: str, token: str, response: web.StreamResponse | None) -> None:
        """Keep the released response for replays if something was generated (or a job created); else
        free the key."""
        stored = None
        body = getattr(response, "body", None)
        answered = exchange.result is not None or "job_id" in exchange.notes
        if response is not None and answered and response.status < 500 and isinstance(body, bytes):
            stored = StoredResponse(response.status, dict(response.headers), body)
        try:
            await self.store.idempotency_end(key, token, stored, self.settings.idempotency.ttl_s)
        except Exception as exc:  # never fail a released response; the claim's lease runs out by itself
            self._count_failure("idempotency_end")
            log.error("limit_backend_unavailable", backend=self.store.backend, operation="idempotency_end", error=str(exc))

    # -- on_response -------------------------------------------------------------------------------

    async def on_response(self, exchange: Exchange) -> None:
        note: _Note | None = exchange.notes.get("limits")
        if note is None:
            return
        if note.replay:
            exchange.cost_usd = 0.0
            exchange.response_headers["X-Imagegate-Cost-USD"] = format_usd(0.0)
            await self._report_budgets(exchange)
            return
        assert exchange.request is not None
        kind = self.provider_kinds.get(exchange.provider or "", exchange.provider)
        actual = self.prices.actual_cost(exchange.request, exchange.result, kind)
        if actual is None:
            images = len(exchange.result.images) if exchange.result else 0
            actual = self.settings.unknown_model_usd_per_image * images
        exchange.cost_usd = actual
        exchange.response_headers["X-Imagegate-Cost-USD"] = format_usd(actual)
        if actual and self.metrics is not None:
            self.metrics.cost.labels(exchange.provider or "").inc(actual)
        if note.held_micros is None or not note.budgets:
            return
        delta = usd_to_micros(actual) - note.held_micros
        try:
            spent = await self.store.settle(note.budgets, delta)
        except LimitStoreUnavailable as exc:
            self._count_failure("settle")
            log.error("limit_backend_unavailable", backend=self.store.backend, operation="settle",
                      error=str(exc), unsettled_usd=micros_to_usd(delta))
            return
        exchange.response_headers.update(budget_headers(note.budgets, spent, exchange.started_at))

    async def _report_budgets(self, exchange: Exchange) -> None:
        """The remaining-budget headers without touching any counter (a zero hold)."""
        assert exchange.caller is not None
        caller = exchange.caller
        policy = self.policy_for(caller.tenant)
        budgets = plan_budgets(policy, tenant=caller.tenant, user=caller.end_user, key_id=caller.key_id, now=exchange.started_at)
        if not budgets:
            return
        try:
            outcome = await self.store.check([], budgets, 0)
        except LimitStoreUnavailable:
            self._count_failure("budget_status")
            return
        exchange.response_headers.update(limit_headers(outcome, exchange.started_at))

    # -- failures ----------------------------------------------------------------------------------

    def _count_failure(self, operation: str) -> None:
        if self.metrics is not None:
            self.metrics.limit_backend_failures.labels(self.store.backend, operation).inc()

    def _backend_failed(self, exchange: Exchange, operation: str, exc: Exception) -> None:
        self._count_failure(operation)
        log.error("limit_backend_unavailable", backend=self.store.backend, operation=operation, error=str(exc),
                  fail_open=self.fail_open, request_id=exchange.request_id)
        exchange.decide(Decision(stage=self.name, action=Action.ERROR, reason=f"limit store unavailable: {str(exc)[:200]}",
                                 details={"fail_open": self.fail_open, "operation": operation}))
        if not self.fail_open:
            raise LimitsUnavailableError(
                "Rate limits and budgets cannot be checked right now (the limit store is unreachable), so the "
                "request was refused rather than let through unmetered. Retry later.",
                headers={"Retry-After": "5"},
            )
        exchange.response_headers["X-Imagegate-Limits"] = "unchecked"


# -- pure helpers ----------------------------------------------------------------------------------


def format_usd(value: float) -> str:
    return f"{value:.6f}"


def fingerprint(exchange: Exchange) -> str:
    """What makes two requests "the same" for an idempotency key."""
    request = exchange.request
    assert request is not None
    data = {
        "route": exchange.route, "model": request.model, "prompt": request.prompt, "negative": request.negative_prompt,
        "n": request.n, "size": request.size, "quality": request.quality, "format": request.output_format,
        "response_format": request.response_format, "user": request.user,
        "images": [image.sha256 for image in request.images], "mask": request.mask.sha256 if request.mask else None,
        "extra": request.extra,
    }
    if "job_webhook" in exchange.notes:  # a job submit: the webhook it registers is part of the request
        data["webhook"] = exchange.notes["job_webhook"]
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def limit_headers(outcome: CheckOutcome, now: float) -> dict[str, str]:
    """`X-RateLimit-*` for the tightest counter, and the remaining budget after the hold."""
    headers: dict[str, str] = {}
    if outcome.rates:
        refused = [state for state in outcome.rates if not state.allowed]
        tightest = (
            max(refused, key=lambda state: state.retry_after_us)
            if refused
            else min(outcome.rates, key=lambda state: (state.remaining / state.check.limit, state.remaining))
        )
        headers.update({
            "X-RateLimit-Limit": str(tightest.check.limit),
            "X-RateLimit-Remaining": str(tightest.remaining),
            "X-RateLimit-Reset": str(math.ceil(tightest.reset_us / 1e6)),
            "X-RateLimit-Policy": f"{tightest.check.limit};w={tightest.check.window_s:g};name=\"{tightest.check.rule}:{tightest.check.kind}\"",
        })
    if outcome.budgets:
        headers.update(budget_headers([s.check for s in outcome.budgets], [s.spent_micros for s in outcome.budgets], now))
    return headers


def budget_headers(budgets: list[BudgetCheck], spent: list[int], now: float) -> dict[str, str]:
    """The budget with the least money left: how much, of how much, which one, when it resets."""
    index = min(range(len(budgets)), key=lambda i: budgets[i].limit_micros - spent[i])
    budget = budgets[index]
    return {
        "X-Imagegate-Budget-Remaining-USD": format_usd(micros_to_usd(max(0, budget.limit_micros - spent[index]))),
        "X-Imagegate-Budget-Limit-USD": format_usd(micros_to_usd(budget.limit_micros)),
        "X-Imagegate-Budget-Scope": f"{budget.scope}/{budget.period}",
        "X-Imagegate-Budget-Reset": str(max(0, math.ceil(budget.resets_at - now))),
    }


def refusal(outcome: CheckOutcome, headers: dict[str, str], now: float) -> RateLimitError:
    refused_rates = [state for state in outcome.rates if not state.allowed]
    if refused_rates:
        state = max(refused_rates, key=lambda s: s.retry_after_us)
        retry_after = max(1, math.ceil(state.retry_after_us / 1e6))
        check = state.check
        message = (
            f"Rate limit reached for {check.kind} ({check.limit} per {check.window_s:g}s, rule '{check.rule}'). "
            f"Try again in {retry_after}s."
        )
        return RateLimitError(message, code="rate_limit_exceeded", headers={**headers, "Retry-After": str(retry_after)})
    budget = next(s for s in outcome.budgets if not s.allowed).check
    retry_after = max(1, math.ceil(budget.resets_at - now))
    message = (
        f"The {'daily' if budget.period == 'day' else 'monthly'} budget of {format_usd(micros_to_usd(budget.limit_micros))} USD for this "
        f"{'account' if budget.scope == 'tenant' else 'user'} is spent (or this request's estimated cost would exceed "
        f"it). It resets in {retry_after}s."
    )
    return RateLimitError(message, code="budget_exceeded", headers={**headers, "Retry-After": str(retry_after)})


def build_limits_stage(settings: Settings) -> LimitsStage:
    """The stage from the config: global `limits:` plus each tenant's `limits:` section."""
    try:
        config = LimitsSettings.model_validate(settings.limits)
        policies = {
            name: LimitPolicy.model_validate(tenant.limits) for name, tenant in settings.tenants.items() if tenant.limits
        }
        prices = PriceTable.load(config.prices)
    except (ValidationError, OSError, ValueError) as exc:
        raise ConfigError(f"invalid limits configuration: {exc}") from exc
    store: LimitStore
    if config.backend == "redis":
        url = url_from("limits", config.redis_url, config.redis_url_env)
        store = RedisLimitStore(url, key_prefix=config.key_prefix, timeout_s=config.timeout_s)
    else:
        store = MemoryLimitStore()
    kinds = {name: provider.kind for name, provider in settings.providers.items()}
    return LimitsStage(store, policies, config, prices=prices, provider_kinds=kinds)
