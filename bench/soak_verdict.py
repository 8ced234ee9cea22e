"""The soak run's verdict, as pure functions of what it observed (no I/O: unit-tested on their own).

Growth is judged on samples taken after a warm-up (the first `WARMUP_FRACTION` of the run, while
imports, caches, connection pools and allocator arenas fill up): the median of the first third of
the remaining samples against the median of the last third. Medians, because a single sample can
land on a burst of large images in flight. The tolerances, and why they are what they are:

- RSS: `max(RSS_TOLERANCE_MIB, RSS_TOLERANCE_FRACTION * first third)`. glibc keeps memory that
  Python frees in per-thread arenas, and decoding or signing an 8 MB image in a worker thread can
  raise an arena's high-water mark, so RSS moves in steps of tens of MiB and then plateaus. A leak
  grows with the request count instead: at 10 requests/s over 5 minutes, 20 KiB kept per request is
  already 60 MiB, and one image kept per request is gigabytes; both exceed the tolerance.
- Open file descriptors: `FD_TOLERANCE` plus half the client concurrency. Each request in flight
  holds up to two sockets (the client's, and an upstream one while the pool grows), so the count
  swings with the load, by at most twice the concurrency; medians of thirds halve that swing. A
  leak of one descriptor on any one path (say the 5% of upstream faults) adds hundreds over minutes.
- At rest (after the client has closed its connections and the upstream pool's idle connections
  have expired), the descriptor count must come back to what it was before the load, give or take
  `FD_REST_TOLERANCE` (a lazily opened file such as the C2PA library's or a font counts once).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

WARMUP_FRACTION = 0.2
RSS_TOLERANCE_MIB = 48.0
RSS_TOLERANCE_FRACTION = 0.10
FD_TOLERANCE = 4
FD_REST_TOLERANCE = 4
MIN_SAMPLES_PER_THIRD = 2


@dataclass(frozen=True)
class Check:
    """One line of the verdict. `ok` is None when the run was too short to judge it."""

    name: str
    ok: bool | None
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Trend:
    first: float
    last: float
    samples: int

    @property
    def growth(self) -> float:
        return self.last - self.first


def trend(times: Sequence[float], values: Sequence[float], duration: float) -> Trend | None:
    """Medians of the first and last thirds of the samples taken after the warm-up; None if too few."""
    kept = [value for time, value in zip(times, values, strict=True) if time >= WARMUP_FRACTION * duration]
    third = len(kept) // 3
    if third < MIN_SAMPLES_PER_THIRD:
        return None
    return Trend(statistics.median(kept[:third]), statistics.median(kept[-third:]), len(kept))


def growth_check(name: str, unit: str, found: Trend | None, tolerance: float) -> Check:
    if found is None:
        return Check(name, None, "too few samples after the warm-up to compare thirds (run longer)")
    detail = (f"median {found.first:.1f} {unit} in the first third, {found.last:.1f} {unit} in the last "
              f"({found.growth:+.1f} {unit}; tolerance {tolerance:.1f} {unit}; {found.samples} samples)")
    return Check(name, found.growth <= tolerance, detail)


def rss_tolerance(first_mib: float) -> float:
    return max(RSS_TOLERANCE_MIB, RSS_TOLERANCE_FRACTION * first_mib)


def fd_tolerance(concurrency: int) -> float:
    return FD_TOLERANCE + concurrency / 2


def response_check(counts: Mapping[str, Mapping[str, int]], expected: Mapping[str, str]) -> Check:
    """Every response is the one its kind was meant to get (a blocked prompt: a 400 content_policy...)."""
    unexpected = {f"{kind}: {outcome}": n for kind, outcomes in counts.items()
                  for outcome, n in outcomes.items() if outcome != expected[kind]}
    missing = [kind for kind in expected if not sum(counts.get(kind, {}).values())]
    if unexpected:
        return Check("only the intended errors", False, f"unexpected: {unexpected}")
    detail = "every response was the intended one"
    if missing:
        detail += f"; kinds never sent (run longer): {', '.join(missing)}"
    return Check("only the intended errors", True, detail)


def audit_checks(sent: int, client_statuses: Mapping[str, int], audit_statuses: Mapping[str, int] | None,
                 chain_ok: bool | None, chain_detail: str) -> list[Check]:
    """One audit record per request, with the status the client saw, and a chain that verifies."""
    if audit_statuses is None:
        return [Check("one audit record per request", False, "the audit log could not be read")]
    records = sum(audit_statuses.values())
    count = Check("one audit record per request", records == sent, f"{records} records for {sent} requests")
    same = dict(client_statuses) == dict(audit_statuses)
    statuses = Check("audit statuses match the responses", same,
                     f"client saw {dict(sorted(client_statuses.items()))}, audit has {dict(sorted(audit_statuses.items()))}")
    return [count, statuses, Check("audit chain verifies", chain_ok, chain_detail)]


def upstream_check(expected_calls: Mapping[str, int], received: Mapping[str, int] | None) -> Check:
    """Blocked prompts never reach the provider, and every other request reaches it exactly once."""
    if received is None:
        return Check("upstream calls as expected", False, "the fake upstream's counters could not be read")
    ok = {k: v for k, v in expected_calls.items() if v} == {k: v for k, v in received.items() if v}
    return Check("upstream calls as expected", ok, f"expected {dict(expected_calls)}, upstream received {dict(received)}")


def rest_check(before: int | None, after: int | None, opened: Mapping[str, int] | None = None) -> Check:
    if before is None or after is None:
        return Check("file descriptors back to rest", None, "not sampled")
    detail = f"{before} before the load, {after} after it (tolerance +{FD_REST_TOLERANCE})"
    if opened:
        detail += f"; opened meanwhile: {dict(opened)}"
    return Check("file descriptors back to rest", after <= before + FD_REST_TOLERANCE, detail)


def passed(checks: Sequence[Check]) -> bool:
    """Passed when no check failed; a check that could not be judged is reported, not counted."""
    return all(check.ok is not False for check in checks)
