"""Where rate-limit counters, budget spending and idempotency records live: memory or Redis.

`LimitStore` is the narrow interface the limits stage uses. One `check` takes every GCRA counter a
request touches and places the budget hold on every money counter, all or nothing: if any counter
refuses, nothing changes. `settle` moves the hold to the actual cost (refund or top-up). The
idempotency methods keep the first response to a request sent with an `Idempotency-Key`.

- `MemoryLimitStore`: the embedded default, one process only (each replica would count alone).
  Atomic because it never awaits inside an operation. The clock is injectable for tests.
- `RedisLimitStore`: shared by every replica. Each operation is ONE Lua script (one round trip,
  atomic on the server); the clock is Redis's own `TIME`, so replicas with drifting clocks agree.
  Script calls go out through one pipelined connection (`proxy.stores.resp`): the calls made during
  one event-loop turn leave in one write (each still its own script call), so throughput is not
  bounded by one round trip at a time, and no redis-py command object is built per check.

Failures of the backend (connection refused, timeout, Redis error) are raised as
`LimitStoreUnavailable`; whether that refuses the request is the stage's configured choice.
Keys carry the tenant as a `{hash tag}`, so one check's keys map to one Redis Cluster slot.
"""

from __future__ import annotations

import abc
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
from .resp import PipelinedRedis, RedisConnectionError, RedisReplyError
from .resp import bulk as _bulk

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


class _Script(NamedTuple):
    sha: str
    source: str
    #: The encoded `EVALSHA <sha>` and `EVAL <source>` heads of a call, ready to be joined.
    evalsha: bytes
    eval: bytes

    @classmethod
    def of(cls, source: str) -> _Script:
        import hashlib

        sha = hashlib.sha1(source.encode()).hexdigest()
        return cls(sha, source, _bulk(b"EVALSHA") + _bulk(sha.encode()), _bulk(b"EVAL") + _bulk(source.encode()))


class RedisLimitStore(LimitStore):
    """Counters in Redis, shared by every replica; one Lua script (one round trip) per operation.

    Script calls go through `PipelinedRedis` (one connection, every call of one event-loop turn in
    one write). `client` is a redis-py client on the same server, for administration and tests.
    """

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
        #: For the redis-py `client` only: the script calls share one pipelined connection.
        self.max_connections = max_connections
        self.max_batch = max_batch
        self._client = client
        self._redis: PipelinedRedis | None = None
        self._scripts: dict[str, _Script] = {}
        #: Encoded keys (`$<len>\r\n<prefix><key>\r\n`) of the counters seen lately; cleared when full.
        self._keys: dict[str, bytes] = {}

    @property
    def client(self) -> Any:
        """A redis-py client on the same server (administration, tests); the checks do not use it."""
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

    @property
    def redis(self) -> PipelinedRedis:
        """The pipelined connection the script calls go through (built on first use, no I/O)."""
        if self._redis is None:
            self._redis = PipelinedRedis(self.url, timeout_s=self.timeout_s, max_batch=self.max_batch)
        return self._redis

    async def start(self) -> None:
        self._scripts = {
            "check": _Script.of(CHECK_SCRIPT),
            "settle": _Script.of(SETTLE_SCRIPT),
            "idem_begin": _Script.of(IDEMPOTENCY_BEGIN_SCRIPT),
            "idem_end": _Script.of(IDEMPOTENCY_END_SCRIPT),
        }
        self.redis  # noqa: B018 - parse the URL now (no I/O yet); Redis may come up later

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.close()
            self._redis = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def ping(self) -> bool:
        try:
            return await self.redis.execute("PING") == b"PONG"
        except Exception:
            return False

    # -- script calls ------------------------------------------------------------------------------

    def _key(self, key: str) -> bytes:
        encoded = self._keys.get(key)
        if encoded is None:
            if len(self._keys) >= 100_000:
                self._keys.clear()
            encoded = self._keys[key] = _bulk((self.key_prefix + key).encode())
        return encoded

    async def _call(self, name: str, keys: list[bytes], args: list[bytes]) -> Any:
        """One script call: ONE `EVALSHA` with encoded keys and arguments (see `_bulk`).

        Concurrent calls share a write (`PipelinedRedis`), each still one atomic script call. A
        server that lost the script (restart, SCRIPT FLUSH) answers NOSCRIPT without running it;
        that call alone is sent again as `EVAL` with the source, which loads it for the next ones.
        """
        if not self._scripts:
            await self.start()
        script = self._scripts[name]
        head = b"*%d\r\n" % (3 + len(keys) + len(args))
        count = _bulk(b"%d" % len(keys))
        redis = self.redis
        try:
            reply = await redis.call(b"".join((head, script.evalsha, count, *keys, *args)))
            if type(reply) is RedisReplyError and str(reply).startswith("NOSCRIPT"):
                reply = await redis.call(b"".join((head, script.eval, count, *keys, *args)))
        except RedisConnectionError as exc:
            raise _unavailable(exc) from exc
        if isinstance(reply, RedisReplyError):
            raise LimitStoreUnavailable(f"Redis error reply: {reply}")
        return reply

    # -- operations --------------------------------------------------------------------------------

    async def check(
        self, rates: Sequence[RateCheck], budgets: Sequence[BudgetCheck], hold_micros: int, *, now_us: int | None = None
    ) -> CheckOutcome:
        key = self._key
        keys = [key(rate.key) for rate in rates]
        keys += [key(budget.key) for budget in budgets]
        args = [
            _EMPTY if now_us is None else _bulk(b"%d" % now_us),
            _bulk(b"%d" % hold_micros),
            _bulk(";".join([f"{rate.interval_us},{rate.burst},{rate.cost}" for rate in rates]).encode()),
            _bulk(";".join([f"{budget.limit_micros},{budget.ttl_s}" for budget in budgets]).encode()),
        ]
        values = list(map(int, (await self._call("check", keys, args)).split()))
        rate_states = [
            RateState(rate, values[i] == 1, values[i + 1], values[i + 2], values[i + 3])
            for i, rate in zip(range(2, 2 + len(rates) * 4, 4), rates)
        ]
        offset = 2 + len(rates) * 4
        budget_states = [
            BudgetState(budget, values[j] == 1, values[j + 1])
            for j, budget in zip(range(offset, offset + len(budgets) * 2, 2), budgets)
        ]
        return CheckOutcome(values[0] == 1, rate_states, budget_states, values[1])

    async def settle(self, budgets: Sequence[BudgetCheck], delta_micros: int) -> list[int]:
        if not budgets:
            return []
        out = await self._call("settle", [self._key(budget.key) for budget in budgets], [_bulk(b"%d" % delta_micros)])
        return list(out)

    async def idempotency_begin(self, key: str, fingerprint: str, token: str, lease_s: float) -> IdempotencyState:
        out = await self._call(
            "idem_begin",
            [_bulk((self.key_prefix + key).encode())],
            [_bulk(fingerprint.encode()), _bulk(token.encode()), _bulk(b"%d" % int(lease_s * 1000))],
        )
        status = out[0].decode() if isinstance(out[0], bytes) else out[0]
        if status == "done":
            return IdempotencyState("done", StoredResponse.decode(out[1]))
        if status == "in_flight":
            return IdempotencyState("in_flight", retry_after_s=max(1.0, min(int(out[1]) / 1000, 60.0)))
        return IdempotencyState("mismatch" if status == "mismatch" else "new")

    async def idempotency_end(self, key: str, token: str, response: StoredResponse | None, ttl_s: float) -> None:
        payload = b"" if response is None else response.encode()
        await self._call(
            "idem_end",
            [_bulk((self.key_prefix + key).encode())],
            [_bulk(token.encode()), _bulk(payload), _bulk(b"%d" % int(ttl_s * 1000))],
        )


_EMPTY = _bulk(b"")


def _unavailable(exc: BaseException) -> LimitStoreUnavailable:
    if isinstance(exc, LimitStoreUnavailable):
        return exc
    error = LimitStoreUnavailable(f"{type(exc).__name__}: {exc}")
    error.__cause__ = exc
    return error
