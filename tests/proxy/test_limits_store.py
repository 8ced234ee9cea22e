"""The Redis limit store against the real Redis: same answers as the in-memory store, atomic, shared."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from policies.limits import MICROS, LimitPolicy, plan_budgets, plan_rates, usd_to_micros
from proxy.stores.limits import (
    LimitStoreUnavailable,
    MemoryLimitStore,
    RedisLimitStore,
    StoredResponse,
)

REDIS_URL = "redis://127.0.0.1:6379/0"
pytestmark = pytest.mark.redis


async def redis_up() -> bool:
    store = RedisLimitStore(REDIS_URL)
    try:
        return await store.ping()
    finally:
        await store.close()


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    """A key prefix of this test's own; every key under it is deleted afterwards."""
    if not await redis_up():
        pytest.skip("no Redis at 127.0.0.1:6379")
    import redis.asyncio as redis

    prefix = f"imagegate-test:{uuid.uuid4().hex[:12]}:"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    keys = [key async for key in client.scan_iter(match=prefix + "*", count=1000)]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture
async def store(redis_prefix: str) -> AsyncIterator[RedisLimitStore]:
    store = RedisLimitStore(REDIS_URL, key_prefix=redis_prefix)
    await store.start()
    yield store
    await store.close()


POLICY = LimitPolicy.model_validate({
    "rules": [
        {"name": "user", "scope": "user", "requests": 5, "images": 8, "window": "10s", "burst_requests": 3},
        {"name": "tenant", "scope": "tenant", "requests": 100, "window": "1m"},
    ],
    "budgets": {"user": {"day_usd": 1}, "tenant": {"month_usd": 2}},
})


def plan(images: int = 1, user: str = "u1", now: float = 1_750_000_000.0):
    rates = plan_rates(POLICY, tenant="acme", user=user, key_id="k", model="gpt-image-1", operation="generate", images=images)
    return rates, plan_budgets(POLICY, tenant="acme", user=user, key_id="k", now=now)


async def test_redis_and_memory_agree_step_by_step(store: RedisLimitStore) -> None:
    memory = MemoryLimitStore(clock=lambda: 1_750_000_010.0)
    start = 1_750_000_000 * MICROS
    steps = [(0, 1, 0.3), (0, 2, 0.3), (0, 1, 0.3), (0, 1, 0.3), (100_000, 3, 0.1), (2_000_000, 1, 0.1), (2_000_000, 4, 0.0),
             (9_000_000, 2, 0.2), (9_000_001, 1, 0.5)]
    for offset, images, usd in steps:
        rates, budgets = plan(images)
        expected = await memory.check(rates, budgets, usd_to_micros(usd), now_us=start + offset)
        got = await store.check(rates, budgets, usd_to_micros(usd), now_us=start + offset)
        assert got == expected, (offset, images, usd)
    rates, budgets = plan()
    assert await store.settle(budgets, -300_000) == await memory.settle(budgets, -300_000)


async def test_redis_uses_its_own_clock(store: RedisLimitStore) -> None:
    rates, budgets = plan()
    outcome = await store.check(rates, budgets, 0)
    assert outcome.allowed and abs(outcome.now_us / MICROS - __import__("time").time()) < 5
    assert outcome.rates[0].remaining == 2


async def test_concurrent_checks_allow_exactly_the_burst(store: RedisLimitStore) -> None:
    rates, _ = plan()
    outcomes = await asyncio.gather(*[store.check(rates, [], 0) for _ in range(50)])
    assert sum(outcome.allowed for outcome in outcomes) == 3  # burst_requests
    assert all(o.rates[0].retry_after_us > 0 for o in outcomes if not o.allowed)


async def test_concurrent_holds_never_overspend(store: RedisLimitStore) -> None:
    _, budgets = plan(user="spender")
    outcomes = await asyncio.gather(*[store.check([], budgets, usd_to_micros(0.15)) for _ in range(40)])
    assert sum(o.allowed for o in outcomes) == 6  # 6 x 0.15 <= 1.00 < 7 x 0.15
    assert max(o.budgets[1].spent_micros for o in outcomes) == 900_000


async def test_idempotency_in_redis(store: RedisLimitStore) -> None:
    assert (await store.idempotency_begin("idem:{acme}:k1", "fp", "t1", 30)).status == "new"
    busy = await store.idempotency_begin("idem:{acme}:k1", "fp", "t2", 30)
    assert busy.status == "in_flight" and 1 <= busy.retry_after_s <= 30
    assert (await store.idempotency_begin("idem:{acme}:k1", "other", "t2", 30)).status == "mismatch"
    body = b'{"data": []}' + bytes(range(256))
    await store.idempotency_end("idem:{acme}:k1", "t2", StoredResponse(200, {}, b"x"), 60)  # not the owner
    await store.idempotency_end("idem:{acme}:k1", "t1", StoredResponse(201, {"Content-Type": "application/json"}, body), 60)
    done = await store.idempotency_begin("idem:{acme}:k1", "fp", "t3", 30)
    assert done.status == "done" and done.response == StoredResponse(201, {"Content-Type": "application/json"}, body)
    assert (await store.idempotency_begin("idem:{acme}:k2", "fp", "t1", 30)).status == "new"
    await store.idempotency_end("idem:{acme}:k2", "t1", None, 60)
    assert (await store.idempotency_begin("idem:{acme}:k2", "fp", "t9", 30)).status == "new"


async def test_scripts_are_reloaded_after_a_flush(store: RedisLimitStore) -> None:
    rates, _ = plan(user="flush")
    await store.check(rates, [], 0)
    await store.client.script_flush()
    assert (await store.check(rates, [], 0)).allowed
    await store.client.script_flush()
    outcomes = await asyncio.gather(*[store.check(rates, [], 0) for _ in range(5)])  # a pipelined batch
    assert sum(o.allowed for o in outcomes) == 1


async def test_unreachable_redis_is_reported_as_unavailable() -> None:
    store = RedisLimitStore("redis://127.0.0.1:1/0", timeout_s=0.2)
    await store.start()
    assert not await store.ping()
    rates, budgets = plan()
    with pytest.raises(LimitStoreUnavailable):
        await store.check(rates, budgets, 0)
    results = await asyncio.gather(*[store.check(rates, budgets, 0) for _ in range(3)], return_exceptions=True)
    assert all(isinstance(result, LimitStoreUnavailable) for result in results)
    with pytest.raises(LimitStoreUnavailable):
        await store.idempotency_begin("k", "fp", "t", 1)
    await store.close()
