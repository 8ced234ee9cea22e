"""Prometheus metrics, one registry per application (no module-level globals), served at /metrics.

Labels are bounded sets (route, status class, stage, action, provider); never a tenant key, a user
or a prompt.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "imagegate_requests_total", "Requests by route and HTTP status.", ["route", "status"], registry=self.registry
        )
        self.decisions = Counter(
            "imagegate_decisions_total", "Stage decisions by stage, action and category.",
            ["stage", "action", "category"], registry=self.registry,
        )
        self.upstream_latency = Histogram(
            "imagegate_upstream_latency_seconds", "Time the upstream provider took.", ["provider"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.added_latency = Histogram(
            "imagegate_added_latency_seconds", "Time imagegate added on top of the upstream call.", ["route"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.stage_latency = Histogram(
            "imagegate_stage_latency_seconds", "Time spent in each stage hook.", ["stage"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.audit_failures = Counter(
            "imagegate_audit_write_failures_total", "Audit records that could not be written.", registry=self.registry
        )
        self.cost = Counter(
            "imagegate_cost_usd_total", "Estimated upstream spend in USD.", ["provider"], registry=self.registry
        )
        self.limit_backend_failures = Counter(
            "imagegate_limit_backend_failures_total",
            "Rate-limit/budget store operations that failed (backend unreachable or erroring).",
            ["backend", "operation"], registry=self.registry,
        )
        self._stage_children: dict[str, Histogram] = {}
        self.in_flight = Gauge("imagegate_requests_in_flight", "Requests being handled.", registry=self.registry)

    def observe_stage(self, key: str, seconds: float) -> None:
        """Per-stage latency, with the labelled child cached (label lookup is the costly part)."""
        child = self._stage_children.get(key)
        if child is None:
            child = self._stage_children[key] = self.stage_latency.labels(key)
        child.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
