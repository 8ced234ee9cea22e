"""Rate-limit and budget rules: what a tenant allows, which counters a request touches, GCRA maths.

A tenant's `LimitPolicy` holds rate rules (requests and images per window, per tenant, per end user
or per API key, optionally only for some models or operations) and money budgets (USD per day and
per month, for the tenant and for each end user). `plan_rates` and `plan_budgets` turn a policy and
one request into the list of counters to check; a store (`proxy.stores.limits`) applies them
atomically. `gcra` is the smoothing algorithm (the Generic Cell Rate Algorithm, a token bucket
expressed as one "theoretical arrival time" per counter), written once here for the in-memory store
and mirrored line for line by the Redis store's Lua script.

Time is integer microseconds and money integer micro-dollars everywhere below, so the Python and
Lua sides compute the same numbers. This module is pure: no clock (callers pass `now`), no network,
no exchange.
"""

from __future__ import annotations

import calendar
import hashlib
import re
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Literal, NamedTuple

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

MICROS = 1_000_000

_WINDOW = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SAFE_ID = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")


def parse_window(value: str | float) -> float:
    """Seconds from `60`, `"60s"`, `"1m"`, `"1h"`, `"1d"` (also `"500ms"`)."""
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _WINDOW.match(value)
        if not match:
            raise ValueError(f"invalid window {value!r}: use seconds or a number with ms, s, m, h or d")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise ValueError("a window must be longer than zero")
    return seconds


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RateRule(_Model):
    """At most `requests` requests and/or `images` images per `window`, smoothed (GCRA).

    `burst_*` is how many may arrive at once after a quiet spell (default: the whole allowance, so
    a fresh caller may use a full window's worth immediately; after that, one more every
    window/limit). `scope` says whose counter it is: the tenant's, each end user's (`user`: the
    `X-Imagegate-User` header or the request's `user` field; a request naming none counts against
    its API key), or each API key's. `models` and `operations` narrow the rule; empty means all.
    """

    name: str | None = None
    scope: Literal["tenant", "user", "key"] = "user"
    requests: int | None = Field(None, gt=0)
    images: int | None = Field(None, gt=0)
    window: float = 60.0
    burst_requests: int | None = Field(None, gt=0)
    burst_images: int | None = Field(None, gt=0)
    models: list[str] = Field(default_factory=list)
    operations: list[Literal["generate", "edit"]] = Field(default_factory=list)

    @field_validator("window", mode="before")
    @classmethod
    def _window(cls, value: str | float) -> float:
        return parse_window(value)

    @model_validator(mode="after")
    def _something_to_limit(self) -> RateRule:
        if self.requests is None and self.images is None:
            raise ValueError("a rate rule needs `requests`, `images` or both")
        return self

    def applies_to(self, model: str, operation: str) -> bool:
        return (not self.models or model in self.models) and (not self.operations or operation in self.operations)


class Budget(_Model):
    """Money a scope may spend per calendar day and per calendar month (UTC), in USD."""

    day_usd: float | None = Field(None, ge=0)
    month_usd: float | None = Field(None, ge=0)


class BudgetRules(_Model):
    tenant: Budget = Field(default_factory=Budget)
    #: Applies to each end user separately.
    user: Budget = Field(default_factory=Budget)


class LimitPolicy(_Model):
    """One tenant's limits: the `limits` section of a tenant (or `limits.defaults`)."""

    rules: list[RateRule] = Field(default_factory=list)
    budgets: BudgetRules = Field(default_factory=BudgetRules)
    #: Plans already made for this policy (who, what) -> counters; bounded, cleared when full.
    _plans: dict[tuple[Any, ...], list[Any]] = PrivateAttr(default_factory=dict)

    @property
    def empty(self) -> bool:
        budgets = self.budgets
        return not self.rules and all(
            value is None for budget in (budgets.tenant, budgets.user) for value in (budget.day_usd, budget.month_usd)
        )


# -- counters --------------------------------------------------------------------------------------


class RateCheck(NamedTuple):
    """One GCRA counter a request must pass: `cost` units against `limit` per `window_s`."""

    key: str
    rule: str
    kind: str
    limit: int
    window_s: float
    cost: int
    #: window / limit, in microseconds: the time one unit takes to be replenished.
    interval_us: int
    burst: int


class BudgetCheck(NamedTuple):
    """One money counter: spending in this scope and period may not pass `limit_micros`."""

    key: str
    scope: str
    period: str
    limit_micros: int
    #: When the period ends (epoch seconds, UTC); the counter expires a day after.
    resets_at: float

    @property
    def ttl_s(self) -> int:
        return 86400 * 32 if self.period == "month" else 86400 * 2


def key_part(value: str) -> str:
    """A safe piece of a counter key: short plain ids as they are, anything else hashed."""
    return value if _SAFE_ID.match(value) else "h-" + hashlib.sha256(value.encode("utf-8")).hexdigest()[:24]


def subject(scope: str, *, tenant: str, user: str | None, key_id: str) -> str:
    """Whose counter: `tenant`, `user:<id>` (falling back to the API key), or `key:<id>`."""
    if scope == "tenant":
        return "tenant"
    if scope == "user" and user:
        return "user:" + key_part(user)
    return "key:" + key_part(key_id)


_MAX_PLANS = 10_000


def _cached(policy: LimitPolicy, key: tuple[Any, ...], build: Any) -> list[Any]:
    plans = policy._plans
    found = plans.get(key)
    if found is None:
        if len(plans) >= _MAX_PLANS:
            plans.clear()
        found = plans[key] = build()
    return found


def plan_rates(
    policy: LimitPolicy, *, tenant: str, user: str | None, key_id: str, model: str, operation: str, images: int
) -> list[RateCheck]:
    """The rate counters one request touches, in rule order. Keys share the `{tenant}` hash tag."""
    if not policy.rules:
        return []
    key = ("rates", tenant, user, key_id, model, operation, images)
    return _cached(policy, key, lambda: _plan_rates(policy, tenant, user, key_id, model, operation, images))


def _plan_rates(
    policy: LimitPolicy, tenant: str, user: str | None, key_id: str, model: str, operation: str, images: int
) -> list[RateCheck]:
    checks: list[RateCheck] = []
    tag = "{" + key_part(tenant) + "}"
    for index, rule in enumerate(policy.rules):
        if not rule.applies_to(model, operation):
            continue
        who = subject(rule.scope, tenant=tenant, user=user, key_id=key_id)
        name = rule.name or f"rule{index}"
        for kind, limit, burst, cost in (
            ("requests", rule.requests, rule.burst_requests, 1),
            ("images", rule.images, rule.burst_images, images),
        ):
            if limit is None:
                continue
            window_us = round(rule.window * MICROS)
            checks.append(
                RateCheck(
                    key=f"rate:{tag}:{who}:{key_part(name)}:{kind}",
                    rule=name,
                    kind=kind,
                    limit=limit,
                    window_s=rule.window,
                    cost=cost,
                    interval_us=max(1, window_us // limit),
                    burst=burst or limit,
                )
            )
    return checks


def period_bounds(now: float, period: str) -> tuple[str, float]:
    """The UTC period label (`2026-05-14`, `2026-05`) containing `now` and when it ends."""
    return _period_bounds(int(now // 86400), period)


@lru_cache(maxsize=64)
def _period_bounds(day: int, period: str) -> tuple[str, float]:
    moment = datetime.fromtimestamp(day * 86400, tz=UTC)
    if period == "day":
        return moment.strftime("%Y-%m-%d"), (day + 1) * 86400.0
    days = calendar.monthrange(moment.year, moment.month)[1]
    start = datetime(moment.year, moment.month, 1, tzinfo=UTC)
    return moment.strftime("%Y-%m"), start.timestamp() + days * 86400


def plan_budgets(policy: LimitPolicy, *, tenant: str, user: str | None, key_id: str, now: float) -> list[BudgetCheck]:
    """The money counters one request touches: tenant and user, day and month, where configured."""
    budgets = policy.budgets
    if budgets.tenant == budgets.user == Budget():
        return []
    key = ("budgets", tenant, user, key_id, int(now // 86400))
    return _cached(policy, key, lambda: _plan_budgets(policy, tenant, user, key_id, now))


def _plan_budgets(policy: LimitPolicy, tenant: str, user: str | None, key_id: str, now: float) -> list[BudgetCheck]:
    checks: list[BudgetCheck] = []
    tag = "{" + key_part(tenant) + "}"
    for scope, budget in (("tenant", policy.budgets.tenant), ("user", policy.budgets.user)):
        who = subject(scope, tenant=tenant, user=user, key_id=key_id)
        for period, limit in (("day", budget.day_usd), ("month", budget.month_usd)):
            if limit is None:
                continue
            label, resets_at = period_bounds(now, period)
            checks.append(
                BudgetCheck(
                    key=f"budget:{tag}:{who}:{period}:{label}",
                    scope=scope,
                    period=period,
                    limit_micros=usd_to_micros(limit),
                    resets_at=resets_at,
                )
            )
    return checks


def usd_to_micros(usd: float) -> int:
    return round(usd * MICROS)


def micros_to_usd(micros: int) -> float:
    return micros / MICROS


# -- GCRA ------------------------------------------------------------------------------------------


class GcraOutcome(NamedTuple):
    allowed: bool
    #: The counter's theoretical arrival time after this call (unchanged when refused).
    tat_us: int
    #: Units that could still be taken at once after this call.
    remaining: int
    #: Microseconds until the counter is back to its full burst.
    reset_us: int
    #: Microseconds to wait before this request would pass (0 when allowed).
    retry_after_us: int


def gcra(tat_us: int | None, now_us: int, cost: int, interval_us: int, burst: int) -> GcraOutcome:
    """Take `cost` units from a GCRA counter whose stored theoretical arrival time is `tat_us`.

    The counter allows `burst` units at once and one more every `interval_us`. Mirrored exactly by
    the Lua script in `proxy.stores.limits`: integer arithmetic only.
    """
    base = now_us if tat_us is None or tat_us < now_us else tat_us
    new_tat = base + cost * interval_us
    allow_at = new_tat - burst * interval_us
    if allow_at > now_us:
        remaining = max(0, (now_us + burst * interval_us - base) // interval_us)
        retry = allow_at - now_us if cost <= burst else burst * interval_us
        return GcraOutcome(False, base, remaining, base - now_us, retry)
    remaining = (now_us + burst * interval_us - new_tat) // interval_us
    return GcraOutcome(True, new_tat, remaining, new_tat - now_us, 0)
