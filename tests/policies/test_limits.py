"""Limit rules, counter planning and GCRA, with the in-memory store on an injectable clock (no sleeps)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from policies.limits import (
    MICROS,
    LimitPolicy,
    RateRule,
    gcra,
    key_part,
    parse_window,
    period_bounds,
    plan_budgets,
    plan_rates,
    usd_to_micros,
)
from proxy.stores.limits import MemoryLimitStore


class Clock:
    def __init__(self, now: float = 1_750_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def policy(**data: object) -> LimitPolicy:
    return LimitPolicy.model_validate(data)


def rates_for(p: LimitPolicy, *, user: str | None = "u1", model: str = "gpt-image-1", operation: str = "generate", images: int = 1):
    return plan_rates(p, tenant="acme", user=user, key_id="k1", model=model, operation=operation, images=images)


# -- rules -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [(60, 60.0), ("90", 90.0), ("500ms", 0.5), ("1m", 60.0), ("2h", 7200.0), ("1d", 86400.0)])
def test_parse_window(text: str | int, seconds: float) -> None:
    assert parse_window(text) == seconds


@pytest.mark.parametrize("bad", ["", "1w", "-1s", 0])
def test_parse_window_refuses_nonsense(bad: str | int) -> None:
    with pytest.raises(ValueError):
        parse_window(bad)


def test_a_rule_needs_something_to_limit() -> None:
    with pytest.raises(ValidationError):
        RateRule(scope="user", window=60)
    with pytest.raises(ValidationError):
        RateRule.model_validate({"requests": 5, "typo": 1})


def test_plan_rates_by_scope_model_and_operation() -> None:
    p = policy(rules=[
        {"name": "tenant", "scope": "tenant", "requests": 100, "window": "1m"},
        {"name": "user", "scope": "user", "requests": 10, "images": 20, "window": "1h", "burst_requests": 3},
        {"name": "hd", "scope": "key", "images": 5, "window": "1d", "models": ["gpt-image-1"], "operations": ["edit"]},
    ])
    checks = rates_for(p, images=4)
    assert [(c.rule, c.kind, c.cost) for c in checks] == [("tenant", "requests", 1), ("user", "requests", 1), ("user", "images", 4)]
    assert checks[0].key == "rate:{acme}:tenant:tenant:requests"
    assert checks[1].key == "rate:{acme}:user:u1:user:requests" and checks[1].burst == 3
    assert checks[1].interval_us == 360 * MICROS  # 1 h / 10
    assert checks[2].burst == 20  # default burst: the whole allowance
    edit = rates_for(p, operation="edit")
    assert [c.rule for c in edit][-1] == "hd" and edit[-1].key.startswith("rate:{acme}:key:k1:")
    assert [c.rule for c in rates_for(p, model="dall-e-3", operation="edit")] == ["tenant", "user", "user"]


def test_user_scope_falls_back_to_the_api_key_and_odd_ids_are_hashed() -> None:
    p = policy(rules=[{"scope": "user", "requests": 1}])
    assert rates_for(p, user=None)[0].key == "rate:{acme}:key:k1:rule0:requests"
    odd = rates_for(p, user="evil:{user}\n")[0].key
    assert "evil" not in odd and odd.count("{") == 1
    assert key_part("a" * 65).startswith("h-")


def test_plan_budgets_day_and_month_periods() -> None:
    p = policy(budgets={"tenant": {"month_usd": 100}, "user": {"day_usd": 1.5, "month_usd": 10}})
    now = datetime(2026, 2, 14, 23, 59, 30, tzinfo=UTC).timestamp()
    checks = plan_budgets(p, tenant="acme", user="u1", key_id="k1", now=now)
    assert [(c.scope, c.period, c.limit_micros) for c in checks] == [
        ("tenant", "month", 100_000_000), ("user", "day", 1_500_000), ("user", "month", 10_000_000),
    ]
    assert checks[0].key == "budget:{acme}:tenant:month:2026-02"
    assert checks[1].key == "budget:{acme}:user:u1:day:2026-02-14"
    assert checks[1].resets_at - now == 30
    assert period_bounds(now, "month")[1] == datetime(2026, 3, 1, tzinfo=UTC).timestamp()
    assert policy().empty and not p.empty


# -- GCRA ------------------------------------------------------------------------------------------


def test_gcra_burst_then_one_per_interval() -> None:
    interval, burst, now = 10 * MICROS, 3, 1_000 * MICROS
    tat = None
    for expected_remaining in (2, 1, 0):
        outcome = gcra(tat, now, 1, interval, burst)
        assert outcome.allowed and outcome.remaining == expected_remaining
        tat = outcome.tat_us
    refused = gcra(tat, now, 1, interval, burst)
    assert not refused.allowed and refused.retry_after_us == interval and refused.tat_us == tat
    assert refused.reset_us == 3 * interval
    assert not gcra(tat, now + interval - 1, 1, interval, burst).allowed
    again = gcra(tat, now + interval, 1, interval, burst)
    assert again.allowed and again.remaining == 0


def test_gcra_cost_larger_than_one_and_larger_than_burst() -> None:
    outcome = gcra(None, 0, 4, 1_000, 5)
    assert outcome.allowed and outcome.remaining == 1
    refused = gcra(outcome.tat_us, 0, 2, 1_000, 5)
    assert not refused.allowed and refused.retry_after_us == 1_000 and refused.remaining == 1
    never = gcra(None, 0, 6, 1_000, 5)
    assert not never.allowed and never.retry_after_us == 5_000


def test_gcra_idle_counter_refills_to_burst_only() -> None:
    outcome = gcra(None, 0, 1, 1_000, 3)
    assert gcra(outcome.tat_us, 10_000_000, 1, 1_000, 3).remaining == 2


# -- in-memory store -------------------------------------------------------------------------------


async def test_memory_store_smooths_with_the_clock() -> None:
    clock = Clock()
    store = MemoryLimitStore(clock=clock)
    checks = rates_for(policy(rules=[{"requests": 60, "window": "1m", "burst_requests": 2}]))
    assert (await store.check(checks, [], 0)).allowed
    assert (await store.check(checks, [], 0)).allowed
    refused = await store.check(checks, [], 0)
    assert not refused.allowed and refused.rates[0].retry_after_us == MICROS
    clock.advance(0.999)
    assert not (await store.check(checks, [], 0)).allowed
    clock.advance(0.001)
    assert (await store.check(checks, [], 0)).allowed


async def test_memory_store_is_all_or_nothing() -> None:
    clock = Clock()
    store = MemoryLimitStore(clock=clock)
    p = policy(rules=[{"name": "r", "requests": 10, "images": 4, "window": "1h"}], budgets={"user": {"day_usd": 1}})
    budgets = plan_budgets(p, tenant="acme", user="u1", key_id="k1", now=clock())
    ok = await store.check(rates_for(p, images=3), budgets, usd_to_micros(0.4))
    assert ok.allowed and ok.budgets[0].spent_micros == 400_000 and ok.rates[1].remaining == 1
    # Two images exceed the image counter: nothing else may move (requests, money).
    refused = await store.check(rates_for(p, images=2), budgets, usd_to_micros(0.4))
    assert not refused.allowed and [s.allowed for s in refused.rates] == [True, False]
    assert refused.budgets[0].spent_micros == 400_000
    ok = await store.check(rates_for(p, images=1), budgets, usd_to_micros(0.4))
    assert ok.rates[0].remaining == 8 and ok.budgets[0].spent_micros == 800_000


async def test_memory_store_budget_hold_settle_and_refund() -> None:
    clock = Clock()
    store = MemoryLimitStore(clock=clock)
    p = policy(budgets={"user": {"day_usd": 1}, "tenant": {"month_usd": 5}})
    budgets = plan_budgets(p, tenant="acme", user="u1", key_id="k1", now=clock())
    hold = usd_to_micros(0.6)
    assert (await store.check([], budgets, hold)).allowed
    assert await store.settle(budgets, usd_to_micros(0.25) - hold) == [250_000, 250_000]
    second = await store.check([], budgets, hold)
    assert second.allowed and [s.spent_micros for s in second.budgets] == [850_000, 850_000]
    refused = await store.check([], budgets, hold)
    assert not refused.allowed and [s.allowed for s in refused.budgets] == [True, False]
    assert refused.budgets[1].remaining_micros == 150_000
    assert await store.settle(budgets, -hold) == [250_000, 250_000]  # upstream failed: full refund
    assert (await store.check([], budgets, 0)).allowed  # free requests pass an exhausted budget
    clock.advance(86400 * 2)
    # The day counter has expired and is not resurrected; the month counter lives on.
    assert await store.settle(budgets, 5) == [250_005, 0]


async def test_memory_store_idempotency() -> None:
    clock = Clock()
    store = MemoryLimitStore(clock=clock)
    from proxy.stores.limits import StoredResponse

    assert (await store.idempotency_begin("k", "fp", "t1", 30)).status == "new"
    busy = await store.idempotency_begin("k", "fp", "t2", 30)
    assert busy.status == "in_flight" and busy.retry_after_s == 30
    assert (await store.idempotency_begin("k", "other", "t2", 30)).status == "mismatch"
    await store.idempotency_end("k", "t2", StoredResponse(200, {}, b"no"), 60)  # not the owner: ignored
    await store.idempotency_end("k", "t1", StoredResponse(200, {"A": "b"}, b"body"), 60)
    done = await store.idempotency_begin("k", "fp", "t3", 30)
    assert done.status == "done" and done.response == StoredResponse(200, {"A": "b"}, b"body")
    clock.advance(61)
    assert (await store.idempotency_begin("k", "fp", "t4", 30)).status == "new"
    await store.idempotency_end("k", "t4", None, 60)  # released: the next attempt starts afresh
    assert (await store.idempotency_begin("k", "fp", "t5", 30)).status == "new"
    clock.advance(31)  # a lease that was never finished runs out
    assert (await store.idempotency_begin("k", "fp", "t6", 30)).status == "new"
