"""Idempotency records: the first response to a request sent with an `Idempotency-Key`.

The records live in the limit store's backend (`proxy.stores.limits`: memory or Redis), next to the
counters, so every replica sees the same ones. A key is claimed while its request is in flight (a
lease that runs out by itself if the replica dies), then either holds the released response for a
while (replays) or is released (the attempt failed before anything was generated: a retry starts
afresh). This module holds the record types and the Redis scripts; it does no I/O itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

#: KEYS[1]: the record. ARGV: request fingerprint, claim token, lease in ms.
IDEMPOTENCY_BEGIN_SCRIPT = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then
  redis.call('HSET', KEYS[1], 'state', 'in_flight', 'fp', ARGV[1], 'token', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {'new'}
end
if redis.call('HGET', KEYS[1], 'fp') ~= ARGV[1] then
  return {'mismatch'}
end
if state == 'in_flight' then
  return {'in_flight', tostring(redis.call('PTTL', KEYS[1]))}
end
return {'done', redis.call('HGET', KEYS[1], 'response')}
"""

#: KEYS[1]: the record. ARGV: claim token, encoded response ('' releases the claim), ttl in ms.
IDEMPOTENCY_END_SCRIPT = """
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] or redis.call('HGET', KEYS[1], 'state') ~= 'in_flight' then
  return 0
end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('HSET', KEYS[1], 'state', 'done', 'response', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return 1
"""


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """The first response to an idempotent request, as it was released."""

    status: int
    headers: dict[str, str]
    body: bytes

    def encode(self) -> bytes:
        head = json.dumps({"status": self.status, "headers": self.headers}, separators=(",", ":")).encode()
        return head + b"\n" + self.body

    @classmethod
    def decode(cls, data: bytes) -> StoredResponse:
        head, _, body = data.partition(b"\n")
        meta = json.loads(head)
        return cls(status=int(meta["status"]), headers=dict(meta["headers"]), body=body)


@dataclass(frozen=True, slots=True)
class IdempotencyState:
    #: new: this caller owns the key now; in_flight: another request holds it; done: replay
    #: `response`; mismatch: the key was used for a different request.
    status: Literal["new", "in_flight", "done", "mismatch"]
    response: StoredResponse | None = None
    retry_after_s: float = 1.0
