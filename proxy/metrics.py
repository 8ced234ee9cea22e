"""Prometheus metrics, one registry per application (no module-level globals), served at /metrics.

Labels are bounded sets (route, status class, stage, action, provider); never a tenant key, a user
or a prompt.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

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
        #: Where the classifier's in-process batching runner is, once a stage has one (scrape time).
        self.classifier_runner: Callable[[], Any] = lambda: None
        self.registry.register(RunnerCollector(lambda: self.classifier_runner()))
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


class RunnerCollector(Collector):
    """The classifier's batching runner, read at scrape time: queue depth, batches, images, busy time.

    `runner()` returns the live `BatchingRunner` or None (not loaded, or the classifier is remote);
    then the queue gauges read 0 and the counters are left out rather than reset.
    """

    def __init__(self, runner: Callable[[], Any]) -> None:
        self._runner = runner

    def collect(self) -> Iterator[Metric]:
        runner = self._runner()
        yield GaugeMetricFamily(
            "imagegate_classifier_queue_depth",
            "Images waiting for a batch of the classifier's batching runner.",
            value=runner.queue_depth if runner is not None else 0,
        )
        yield GaugeMetricFamily(
            "imagegate_classifier_batch_in_progress",
            "Images in the batch the classifier is running now (0 when idle).",
            value=runner.in_batch if runner is not None else 0,
        )
        if runner is None:
            return
        yield CounterMetricFamily(
            "imagegate_classifier_batches", "Batches the classifier ran.", value=runner.batches_run
        )
        yield CounterMetricFamily(
            "imagegate_classifier_images", "Images the classifier classified.", value=runner.images_run
        )
        yield CounterMetricFamily(
            "imagegate_classifier_busy_seconds", "Time the classifier's worker spent running batches.",
            value=runner.busy_seconds,
        )
