"""The rows of the benchmark table: one `Metric` per figure, read from each benchmark's `--json`.

`run_all.py` runs every benchmark in its own process; this module turns each benchmark's JSON into
rows (value, the baseline measured in the same run, their ratio, the issue's target) so that the
Markdown table, the JSON and the chart are all drawn from the same list. It never measures
anything and never imports the code under test.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Op = Literal["<", "<=", ">=", "=="]
On = Literal["value", "ratio"]


@dataclass(frozen=True)
class Target:
    """A target from an issue: `on` the metric's value or its ratio to the baseline."""

    issue: int
    text: str
    on: On
    op: Op
    threshold: float

    def met(self, value: float | None, ratio: float | None) -> bool | None:
        """True or False when the figure exists, None when it was not measured."""
        figure = value if self.on == "value" else ratio
        if figure is None or math.isnan(figure):
            return None
        if self.op == "<":
            return figure < self.threshold
        if self.op == "<=":
            return figure <= self.threshold
        if self.op == ">=":
            return figure >= self.threshold
        return abs(figure - self.threshold) <= 0.01 * abs(self.threshold)

    def attainment(self, value: float | None, ratio: float | None) -> float | None:
        """How far the figure is from its target as one number: >= 1 met, < 1 missed (for the chart)."""
        figure = value if self.on == "value" else ratio
        if figure is None or figure == 0 or math.isnan(figure):
            return None
        if self.op in ("<", "<="):
            return self.threshold / figure
        if self.op == ">=":
            return figure / self.threshold
        return 1.0 if self.met(value, ratio) else min(figure / self.threshold, self.threshold / figure)


@dataclass
class Metric:
    """One row of the table. `value` is None when the figure could not be measured (see `note`)."""

    benchmark: str
    name: str
    value: float | None
    unit: str
    baseline: float | None = None
    baseline_label: str = ""
    target_key: str | None = None
    note: str = ""
    ratio: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.value is not None and self.baseline:
            self.ratio = self.value / self.baseline

    def to_dict(self, targets: dict[str, Target]) -> dict[str, Any]:
        row = asdict(self)
        target = targets.get(self.target_key) if self.target_key else None
        row["target"] = asdict(target) if target else None
        row["met"] = target.met(self.value, self.ratio) if target else None
        return row


Extractor = Callable[[dict[str, Any]], list[Metric]]


def latency_metrics(data: dict[str, Any]) -> list[Metric]:
    """Added latency over the direct call, imagegate against the bare proxy, and throughput."""
    rows: list[Metric] = []
    for concurrency, targets in data.items():
        gate, bare = targets["imagegate"], targets["bare aiohttp proxy"]
        for q in ("p50", "p95", "p99"):
            key = "latency_added_p50_c1" if (q == "p50" and concurrency == "1") else None
            rows.append(Metric("latency", f"added {q} at concurrency {concurrency}", gate[f"added_{q}_ms"], "ms",
                               bare[f"added_{q}_ms"], "bare aiohttp proxy, added", key))
        direct = targets["direct upstream"]["throughput_rps"]
        rows.append(Metric("latency", f"throughput at concurrency {concurrency}", gate["throughput_rps"], "req/s",
                           bare["throughput_rps"], "bare aiohttp proxy", note=f"direct upstream: {direct:,.0f} req/s"))
    return rows


def prompt_filter_metrics(data: dict[str, Any]) -> list[Metric]:
    rows = [
        Metric("prompt filter", "lexical layers, median per prompt", data["lexical"]["median_us"], "µs",
               data["regex"]["median_us"], "one compiled regex, no normalisation", "prompt_filter_lexical_median",
               note=f"{data['prompts']} prompts, {data['lexicon_entries']} lexicon entries"),
        Metric("prompt filter", "lexical layers, p99 per prompt", data["lexical"]["p99_us"], "µs",
               data["regex"]["p99_us"], "one compiled regex, no normalisation"),
    ]
    if "paraphrase_single" in data:
        rows.append(Metric("prompt filter", "paraphrase layer, median per prompt",
                           data["paraphrase_single"]["median_us"], "µs", note="reported separately, no target"))
    else:
        rows.append(Metric("prompt filter", "paraphrase layer", None, "µs", note=str(data.get("paraphrase", ""))))
    return rows


def _per_batch_note(split: dict[str, float] | None) -> str:
    """Where the runner's time per batch went (bench_classifier's `per_batch_ms`), if recorded."""
    if not split:
        return ""
    return (f"per batch: compute {split['compute']:.0f} ms (bare {split['bare']:.0f} ms), "
            f"decode wait {split['decode_wait']:.0f} ms, between batches {split['between']:.0f} ms")


def classifier_metrics(data: dict[str, Any]) -> list[Metric]:
    single = data["single_img_s"]
    rows = [Metric("classifier", "one at a time (unbatched)", single, "img/s", note=data["model"])]
    for concurrency, figures in data["scenarios"].items():
        label = f"batching runner, {concurrency} concurrent"
        rows.append(Metric("classifier", f"{label}: speed-up", figures["runner_img_s"], "img/s",
                           single, "one at a time", "classifier_batching_speedup",
                           note=f"mean batch {figures['mean_batch']:.1f}"))
        rows.append(Metric("classifier", f"{label}: vs bare encode_image", figures["runner_img_s"], "img/s",
                           figures["bare_img_s"], "bare model.encode_image loop, same batches",
                           "classifier_runner_vs_bare", note=_per_batch_note(figures.get("per_batch_ms"))))
        rows.append(Metric("classifier", f"{label}: event-loop lag p99", figures["lag_p99_ms"], "ms",
                           target_key="classifier_loop_lag_p99"))
    return rows


def signing_metrics(data: dict[str, Any]) -> list[Metric]:
    rows: list[Metric] = []
    side = data["size"]
    for fmt, figures in data["formats"].items():
        rows.append(Metric("signing", f"{fmt} {side}x{side}: sign", figures["sign_ms"], "ms",
                           figures["sha256_ms"], "SHA-256 of the same bytes", "signing_vs_sha256",
                           note=f"{figures['bytes']:,} bytes"))
        rows.append(Metric("signing", f"{fmt} {side}x{side}: bytes added", figures["bytes_added"], "B",
                           target_key="signing_bytes_added"))
        if "ed25519_sign_ms" in figures:  # the same signature with an Ed25519 certificate
            rows.append(Metric("signing", f"{fmt} {side}x{side}: sign, Ed25519", figures["ed25519_sign_ms"], "ms",
                               figures["sha256_ms"], "SHA-256 of the same bytes", "signing_vs_sha256",
                               note="Ed25519 certificate; the rows above are ES256, the default"))
            rows.append(Metric("signing", f"{fmt} {side}x{side}: bytes added, Ed25519",
                               figures["ed25519_bytes_added"], "B", target_key="signing_bytes_added"))
    return rows


AUDIT_TARGETS = {"sqlite": "audit_sqlite_rps", "postgres": "audit_postgres_rps"}


def audit_metrics(data: dict[str, Any]) -> list[Metric]:
    raw = data["raw_sqlite_rps"]
    rows: list[Metric] = []
    for store in ("sqlite", "postgres"):
        kinds = data["stores"].get(store)
        if not kinds:
            rows.append(Metric("audit", f"{store}: durable records/s", None, "records/s",
                               target_key=AUDIT_TARGETS[store], note=str(data.get(store, data.get("postgres", "")))))
            continue
        for kind, figures in kinds.items():
            rows.append(Metric("audit", f"{store}, {kind} records: durable records/s", figures["rate"], "records/s",
                               raw, "raw SQLite WAL FULL, batches of 64", AUDIT_TARGETS[store],
                               note=f"append p99 {figures['p99_ms']:.1f} ms under load"))
            if store == "sqlite" and kind == "small":
                rows.append(Metric("audit", "sqlite, small records: vs the raw floor (target scaled to this machine)",
                                   figures["rate"], "records/s", raw, "raw SQLite WAL FULL, batches of 64",
                                   "audit_sqlite_vs_raw", note="the issue's 50,000 where the floor ran 190,000"))
            rows.append(Metric("audit", f"{store}, {kind} records: one append alone (durable)", figures["single_ms"],
                               "ms", note="includes the fsync; no target"))
    for kind, cpu_ms in data["chain_cpu_ms"].items():
        rows.append(Metric("audit", f"hash chain CPU per {kind} record", cpu_ms, "ms",
                           target_key="audit_added_per_request", note="what the chain adds to each request"))
    return rows


def limits_metrics(data: dict[str, Any]) -> list[Metric]:
    rows = [Metric("limits", "in-memory check (CPU)", data["memory_check_cpu_us"], "µs",
                   data["memory_baseline_cpu_us"], "dict increment", "limits_memory_us")]
    redis = data.get("redis")
    if not isinstance(redis, dict):
        rows.append(Metric("limits", "Redis checks/s", None, "checks/s", target_key="limits_redis_rps", note=str(redis)))
        return rows
    concurrency = data["concurrency"]
    rows.append(Metric("limits", f"Redis checks/s, {concurrency} concurrent", redis["concurrent_checks_per_s"],
                       "checks/s", redis["concurrent_ping_per_s"], f"{concurrency} concurrent PINGs", "limits_redis_rps"))
    rows.append(Metric("limits", "Redis script calls per check", redis["script_calls_per_check"], "calls",
                       target_key="limits_redis_round_trips", note="counted by Redis (INFO commandstats)"))
    stats = redis["stats"]
    rows.append(Metric("limits", "Redis check latency p50, sequential", stats["check_p50_us"], "µs",
                       stats["ping_p50_us"], "PING p50"))
    return rows
