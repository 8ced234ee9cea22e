"""Where rate-limit counters, budget spending and idempotency records live: memory or Redis.

`LimitStore` is the narrow interface the limits stage uses. One `check` takes every GCRA counter a
request touches and places the budget hold on every money counter, all or nothing: if any counter
refuses, nothing changes. `settle` moves the hold to the actual cost (refund or top-up). The
idempotency methods keep the first response to a request sent with an `Idempotency-Key`.

- `MemoryLimitStore`: the embedded default, one process only (each replica would count alone).
  Atomic because it never awaits inside an operation. The clock is injectable for tests.
- `RedisLimitStore`: shared by every replica. Each operation is ONE Lua script (one round trip,
  atomic on the server); the clock is Redis's own `TIME`, so replicas with drifting clocks agree.
  Concurrent checks from one process are coalesced into pipelines (each check is still its own
  script call), so throughput is not bounded by one round trip at a time.

Failures of the backend (connection refused, timeout, Redis error) are raised as
`LimitStoreUnavailable`; whether that refuses the request is the stage's configured choice.
Keys carry the tenant as a `{hash tag}`, so one check's keys map to one Redis Cluster slot.
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from policies.limits import MICROS, BudgetCheck, RateCheck, gcra

from .idempotency import (
    IDEMPOTENCY_BEGIN_SCRIPT,
    IDEMPOTENCY_END_SCRIPT,
    IdempotencyState,
    StoredResponse,
)

__all__ = [
    "BudgetState", "CheckOutcome", "IdempotencyState", "LimitStore", "LimitStoreUnavailable", "MemoryLimitStore",
    "RateState", "RedisLimitStore", "StoredResponse",
]

#: Scripts are registered by SHA; a server that lost them (restart, SCRIPT FLUSH) gets them again.
#: KEYS: the rate counters, then the budget counters. ARGV: now in microseconds ('' = Redis TIME),
#: the hold in micro-dollars, "interval,burst,cost;..." per rate, "limit,ttl;..." per budget. The
#: answer is one string of integers (cheap to parse): allowed, now, then per rate allowed,
#: remaining, reset, retry_after, then per budget allowed, spent.
CHECK_SCRIPT = """
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[1])
end
local hold = tonumber(ARGV[2])
local function d(x) return string.format('%d', x) end
local out = {'1', d(now)}
local allowed = 1
local new_tats = {}
local i = 0
for interval, burst, cost in string.gmatch(ARGV[3], '(%d+),(%d+),(%d+)') do
  i = i + 1
  interval = tonumber(interval)
  burst = tonumber(burst)
  cost = tonumber(cost)
  local tat = tonumber(redis.call('GET', KEYS[i]))
  local base = now
  if tat and tat > now then base = tat end
  local new_tat = base + cost * interval
  local allow_at = new_tat - burst * interval
  if allow_at > now then
    allowed = 0
    local retry = allow_at - now
    if cost > burst then retry = burst * interval end
    out[#out + 1] = '0'
    out[#out + 1] = d(math.max(0, math.floor((now + burst * interval - base) / interval)))
    out[#out + 1] = d(base - now)
    out[#out + 1] = d(retry)
  else
    new_tats[i] = new_tat
    out[#out + 1] = '1'
    out[#out + 1] = d(math.floor((now + burst * interval - new_tat) / interval))
    out[#out + 1] = d(new_tat - now)
    out[#out + 1] = '0'
  end
end
local n_rates = i
local ttls = {}
local first_spent = #out + 2
local j = 0
for limit, ttl in string.gmatch(ARGV[4], '(%d+),(%d+)') do
  j = j + 1
  ttls[j] = ttl
  local spent = tonumber(redis.call('GET', KEYS[n_rates + j]) or '0')
  if hold > 0 and spent + hold > tonumber(limit) then
    allowed = 0
    out[#out + 1] = '0'
  else
    out[#out + 1] = '1'
  end
  out[#out + 1] = d(spent)
end
if allowed == 1 then
  for k = 1, n_rates do
    redis.call('SET', KEYS[k], d(new_tats[k]), 'PX', math.max(1, math.ceil((new_tats[k] - now) / 1000)))
  end
  for k = 1, j do
    local key = KEYS[n_rates + k]
    out[first_spent + (k - 1) * 2] = d(redis.call('INCRBY', key, hold))
    redis.call('EXPIRE', key, ttls[k])
  end
end
out[1] = d(allowed)
return table.concat(out, ' ')
"""

SETTLE_SCRIPT = """
local out = {}
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    out[i] = redis.call('INCRBY', KEYS[i], ARGV[1])
  else
    out[i] = 0
  end
end
return out
"""

class LimitStoreUnavailable(Exception):
    """The backend could not be reached or answered with an error."""


class RateState(NamedTuple):
    check: RateCheck
    allowed: bool
    remaining: int
    reset_us: int
    retry_after_us: int


class BudgetState(NamedTuple):
    check: BudgetCheck
    allowed: bool
    #: Micro-dollars spent in the period, including this request's hold when it was allowed.
    spent_micros: int

    @property
    def remaining_micros(self) -> int:
        return max(0, self.check.limit_micros - self.spent_micros)


class CheckOutcome(NamedTuple):
    allowed: bool
    rates: list[RateState]
    budgets: list[BudgetState]
    now_us: int


class LimitStore(abc.ABC):
    backend: str = "abstract"

    @abc.abstractmethod
    async def check(
        self, rates: Sequence[RateCheck], budgets: Sequence[BudgetCheck], hold_micros: int, *, now_us: int | None = None
    ) -> CheckOutcome:
        """Take every rate counter and hold `hold_micros` on every budget, or change nothing."""

    @abc.abstractmethod
    async def settle(self, budgets: Sequence[BudgetCheck], delta_micros: int) -> list[int]:
        """Add `delta_micros` (negative: a refund) to budgets held earlier; the new spent values."""

    @abc.abstractmethod
    async def idempotency_begin(self, key: str, fingerprint: str, token: str, lease_s: float) -> IdempotencyState:
        """Claim `key` for a request (fingerprint), or report its first response or holder."""

    @abc.abstractmethod
    async def idempotency_end(self, key: str, token: str, response: StoredResponse | None, ttl_s: float) -> None:
        """Store the response under the claimed key for `ttl_s`, or (None) release the claim."""

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def ping(self) -> bool:
        return True


# -- in memory -------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Idempotency:
    fingerprint: str
    token: str
    expires_at: float
    response: StoredResponse | None = None


@dataclass
class MemoryLimitStore(LimitStore):
    """Counters in this process's memory; `clock` returns epoch seconds (injectable for tests)."""

    clock: Callable[[], float] = time.time
    #: Forget counters that are back to full when more than this many are held.
    max_counters: int = 100_000
    backend: str = "memory"
    _tats: dict[str, int] = field(default_factory=dict)
    #: key -> (micro-dollars spent, expiry in epoch microseconds)
    _spent: dict[str, tuple[int, int]] = field(default_factory=dict)
    _idempotency: dict[str, _Idempotency] = field(default_factory=dict)

    def _now_us(self) -> int:
        return int(self.clock() * MICROS)

    async def check(
        self, rates: Sequence[RateCheck], budgets: Sequence[BudgetCheck], hold_micros: int, *, now_us: int | None = None
    ) -> CheckOutcome:
        return self.check_now(rates, budgets, hold_micros, now_us=now_us)

    def check_now(
        self, rates: Sequence[RateCheck], budgets: Sequence[BudgetCheck], hold_micros: int, *, now_us: int | None = None
    ) -> CheckOutcome:
        """`check` without the coroutine: atomic because it never yields."""
        now = int(self.clock() * MICROS) if now_us is None else now_us
        tats = self._tats
        allowed = True
        outcomes = []
        for rate in rates:
            outcome = gcra(tats.get(rate.key), now, rate.cost, rate.interval_us, rate.burst)
            if not outcome.allowed:
                allowed = False
            outcomes.append(outcome)
        spent_store = self._spent
        spent_now = []
        budget_ok = []
        for budget in budgets:
            entry = spent_store.get(budget.key)
            spent = 0 if entry is None or entry[1] <= now else entry[0]
            ok = hold_micros <= 0 or spent + hold_micros <= budget.limit_micros
            if not ok:
                allowed = False
            spent_now.append(spent)
            budget_ok.append(ok)
        if allowed:
            for rate, outcome in zip(rates, outcomes):
                tats[rate.key] = outcome.tat_us
            for index, budget in enumerate(budgets):
                entry = spent_store.get(budget.key)
                expires = entry[1] if entry is not None and entry[1] > now else now + budget.ttl_s * MICROS
                spent_now[index] += hold_micros
                spent_store[budget.key] = (spent_now[index], expires)
            if len(tats) > self.max_counters:
                self._prune(now)
        return CheckOutcome(
            allowed,
            [RateState(r, o.allowed, o.remaining, o.reset_us, o.retry_after_us) for r, o in zip(rates, outcomes)],
            [BudgetState(b, ok, spent) for b, ok, spent in zip(budgets, budget_ok, spent_now)],
            now,
        )

    def _prune(self, now_us: int) -> None:
        self._tats = {key: tat for key, tat in self._tats.items() if tat > now_us}
        self._spent = {key: entry for key, entry in self._spent.items() if entry[1] > now_us}

    async def settle(self, budgets: Sequence[BudgetCheck], delta_micros: int) -> list[int]:
        now = self._now_us()
        values = []
        for budget in budgets:
            entry = self._spent.get(budget.key)
            if entry is None or entry[1] <= now:
                values.append(0)
                continue
            value = entry[0] + delta_micros
            self._spent[budget.key] = (value, entry[1])
            values.append(value)
        return values

    async def idempotency_begin(self, key: str, fingerprint: str, token: str, lease_s: float) -> IdempotencyState:
        now = self.clock()
        entry = self._idempotency.get(key)
        if entry is not None and entry.expires_at <= now:
            entry = None
        if entry is None:
            if len(self._idempotency) > self.max_counters:
                self._idempotency = {k: e for k, e in self._idempotency.items() if e.expires_at > now}
            self._idempotency[key] = _Idempotency(fingerprint, token, now + lease_s)
            return IdempotencyState("new")
        if entry.fingerprint != fingerprint:
            return IdempotencyState("mismatch")
        if entry.response is None:
            return IdempotencyState("in_flight", retry_after_s=max(1.0, min(entry.expires_at - now, 60.0)))
        return IdempotencyState("done", entry.response)

    async def idempotency_end(self, key: str, token: str, response: StoredResponse | None, ttl_s: float) -> None:
        entry = self._idempotency.get(key)
        if entry is None or entry.token != token or entry.response is not None:
            return
        if response is None:
            del self._idempotency[key]
        else:
            entry.response = response
            entry.expires_at = self.clock() + ttl_s


# -- Redis -----------------------------------------------------------------------------------------


class RedisLimitStore(LimitStore):
    """Counters in Redis, shared by every replica; one Lua script (one round trip) per operation."""

    backend = "redis"

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        key_prefix: str = "imagegate:",
        timeout_s: float = 0.5,
        max_connections: int = 32,
        max_batch: int = 256,
        client: Any = None,
    ) -> None:
        self.url = url
        self.key_prefix = key_prefix
        self.timeout_s = timeout_s
        self.max_connections = max_connections
        self.max_batch = max_batch
        self._client = client
        self._scripts: dict[str, tuple[str, str]] = {}
        self._queue: list[tuple[str, list[str], list[Any], asyncio.Future[Any]]] = []
        self._draining = False
        self._drainer: asyncio.Task[None] | None = None

    @property
    def client(self) -> Any:
        if self._client is None:
            import redis.asyncio as redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            self._client = redis.Redis.from_url(
                self.url,
                socket_timeout=self.timeout_s,
                socket_connect_timeout=self.timeout_s,
                max_connections=self.max_connections,
                retry=Retry(NoBackoff(), 1),
            )
        return self._client

    async def start(self) -> None:
        import hashlib

        for name, source in (
            ("check", CHECK_SCRIPT),
            ("settle", SETTLE_SCRIPT),
            ("idem_begin", IDEMPOTENCY_BEGIN_SCRIPT),
            ("idem_end", IDEMPOTENCY_END_SCRIPT),
        ):
            self._scripts[name] = (hashlib.sha1(source.encode()).hexdigest(), source)
        self.client  # noqa: B018 - build the client (no I/O yet); Redis may come up later

    async def close(self) -> None:
        if self._drainer is not None:
            await asyncio.gather(self._drainer, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except Exception:
            return False

    # -- script calls ------------------------------------------------------------------------------

    async def _call(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """One script call, coalesced with concurrent ones into one pipeline (one round trip)."""
        if not self._scripts:
            await self.start()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((name, keys, args, future))
        if not self._draining:
            self._draining = True
            self._drainer = asyncio.ensure_future(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch = self._queue[: self.max_batch]
                del self._queue[: self.max_batch]
                try:
                    results = await self._send(batch)
                except Exception as exc:  # the whole round trip failed
                    error = _unavailable(exc)
                    for *_, future in batch:
                        if not future.done():
                            future.set_exception(error)
                    continue
                for (*_, future), result in zip(batch, results):
                    if future.done():
                        continue
                    if isinstance(result, Exception):
                        future.set_exception(_unavailable(result))
                    else:
                        future.set_result(result)
        finally:
            self._draining = False

    async def _send(self, batch: list[tuple[str, list[str], list[Any], asyncio.Future[Any]]]) -> list[Any]:
        from redis.exceptions import NoScriptError

        client = self.client
        if len(batch) == 1:
            name, keys, args, _ = batch[0]
            sha, source = self._scripts[name]
            try:
                return [await client.evalsha(sha, len(keys), *keys, *args)]
            except NoScriptError:
                return [await client.eval(source, len(keys), *keys, *args)]
        pipe = client.pipeline(transaction=False)
        for name, keys, args, _ in batch:
            pipe.evalsha(self._scripts[name][0], len(keys), *keys, *args)
        results: list[Any] = await pipe.execute(raise_on_error=False)
        if any(isinstance(result, NoScriptError) for result in results):
            for name, (sha, source) in self._scripts.items():
                await client.script_load(source)
            pipe = client.pipeline(transaction=False)
            for name, keys, args, _ in batch:
                pipe.evalsha(self._scripts[name][0], len(keys), *keys, *args)
            results = await pipe.execute(raise_on_error=False)
        return results

    # -- operations --------------------------------------------------------------------------------

    async def check(
        self, rates: Sequence[RateCheck], budgets: Sequence[BudgetCheck], hold_micros: int, *, now_us: int | None = None
    ) -> CheckOutcome:
        prefix = self.key_prefix
        keys = [prefix + rate.key for rate in rates] + [prefix + budget.key for budget in budgets]
        args = (
            "" if now_us is None else now_us,
            hold_micros,
            ";".join(f"{rate.interval_us},{rate.burst},{rate.cost}" for rate in rates),
            ";".join(f"{budget.limit_micros},{budget.ttl_s}" for budget in budgets),
        )
        values = [int(value) for value in (await self._call("check", keys, list(args))).split()]
        rate_states = [
            RateState(rate, values[2 + i * 4] == 1, values[3 + i * 4], values[4 + i * 4], values[5 + i * 4])
            for i, rate in enumerate(rates)
        ]
        offset = 2 + len(rates) * 4
        budget_states = [
            BudgetState(budget, values[offset + j * 2] == 1, values[offset + j * 2 + 1]) for j, budget in enumerate(budgets)
        ]
        return CheckOutcome(values[0] == 1, rate_states, budget_states, values[1])

    async def settle(self, budgets: Sequence[BudgetCheck], delta_micros: int) -> list[int]:
        if not budgets:
            return []
        out = await self._call("settle", [self.key_prefix + budget.key for budget in budgets], [delta_micros])
        return list(out)

    async def idempotency_begin(self, key: str, fingerprint: str, token: str, lease_s: float) -> IdempotencyState:
        out = await self._call("idem_begin", [self.key_prefix + key], [fingerprint, token, int(lease_s * 1000)])
        status = out[0].decode() if isinstance(out[0], bytes) else out[0]
        if status == "done":
            return IdempotencyState("done", StoredResponse.decode(out[1]))
        if status == "in_flight":
            return IdempotencyState("in_flight", retry_after_s=max(1.0, min(int(out[1]) / 1000, 60.0)))
        return IdempotencyState("mismatch" if status == "mismatch" else "new")

    async def idempotency_end(self, key: str, token: str, response: StoredResponse | None, ttl_s: float) -> None:
        payload = b"" if response is None else response.encode()
        await self._call("idem_end", [self.key_prefix + key], [token, payload, int(ttl_s * 1000)])


def _unavailable(exc: BaseException) -> LimitStoreUnavailable:
    if isinstance(exc, LimitStoreUnavailable):
        return exc
    error = LimitStoreUnavailable(f"{type(exc).__name__}: {exc}")
    error.__cause__ = exc
    return error
