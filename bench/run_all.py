"""Run every benchmark and write one table, one JSON and one chart of the results (issue 11).

    python3 bench/run_all.py [--quick] [--out bench/results] [--only latency signing ...]

Each benchmark runs in its own process (`python3 bench/bench_X.py ... --json PATH`), so one that
fails or hangs is recorded as FAILED in the table and the others still run. Its full output goes to
`OUT/logs/NAME.log`, its figures to `OUT/raw/NAME.json`. The results are

- `OUT/latest.md`: the machine, then one row per figure: value, the baseline measured in the same
  run, their ratio, the issue's target and whether it is met;
- `OUT/latest.json`: the same rows, machine-readable;
- `OUT/latest.png`: latency percentiles (imagegate, the bare proxy, the direct call) at each
  concurrency, throughput, and every other figure as its ratio to its target.

`--quick` runs every benchmark at small sizes (a smoke test, about two minutes); its figures are
noise and are labelled so. The full run is the one the README quotes: run it on a quiet machine.
Nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import suite_report  # noqa: E402
from suite_metrics import (  # noqa: E402
    Extractor,
    Metric,
    Target,
    audit_metrics,
    classifier_metrics,
    latency_metrics,
    limits_metrics,
    prompt_filter_metrics,
    signing_metrics,
)

#: Every target the issues set for a benchmark, keyed by the rows that carry it.
TARGETS: dict[str, Target] = {
    "latency_added_p50_c1": Target(2, "< 1 ms p50 added at concurrency 1, durable audit write included", "value", "<", 1.0),
    "prompt_filter_lexical_median": Target(3, "< 100 µs median per prompt, lexical layers", "value", "<", 100.0),
    "classifier_batching_speedup": Target(4, ">= 1.5x one-at-a-time", "ratio", ">=", 1.5),
    "classifier_runner_vs_bare": Target(4, "within 10% of a bare encode_image loop (>= 0.9x)", "ratio", ">=", 0.9),
    "classifier_loop_lag_p99": Target(4, "event-loop lag p99 < 20 ms", "value", "<", 20.0),
    "signing_vs_sha256": Target(5, "<= 3x a SHA-256 of the same bytes", "ratio", "<=", 3.0),
    "signing_bytes_added": Target(5, "< 8 KB added per image", "value", "<", 8192.0),
    "audit_sqlite_rps": Target(6, ">= 50,000 durable records/s on SQLite", "value", ">=", 50_000.0),
    "audit_sqlite_vs_raw": Target(6, ">= 0.26x the raw floor (50,000 of the issue's 190,000), SQLite", "ratio", ">=", 50_000 / 190_000),
    "audit_postgres_rps": Target(6, ">= 10,000 durable records/s on PostgreSQL", "value", ">=", 10_000.0),
    "audit_added_per_request": Target(6, "< 0.3 ms added per request", "value", "<", 0.3),
    "limits_memory_us": Target(7, "< 20 µs per in-memory check", "value", "<", 20.0),
    "limits_redis_round_trips": Target(7, "one round trip (script call) per check", "value", "==", 1.0),
    "limits_redis_rps": Target(7, ">= 10,000 checks/s from one process", "value", ">=", 10_000.0),
}


@dataclass(frozen=True)
class Benchmark:
    """One benchmark script: its arguments for the full and the quick run, and how to read its JSON."""

    name: str
    script: Path
    full: Sequence[str]
    quick: Sequence[str]
    extract: Extractor
    timeout_s: float = 1800.0

    def command(self, quick: bool, json_path: Path) -> list[str]:
        return [sys.executable, str(self.script), *(self.quick if quick else self.full), "--json", str(json_path)]


BENCHMARKS: list[Benchmark] = [
    Benchmark("latency", BENCH / "bench_latency.py", ["--requests", "2000", "--concurrency", "1", "64", "256"],
              ["--requests", "200", "--concurrency", "1", "64", "256"], latency_metrics),
    Benchmark("prompt_filter", BENCH / "bench_prompt_filter.py", ["--rounds", "5"],
              ["--rounds", "1", "--no-paraphrase"], prompt_filter_metrics),
    Benchmark("classifier", BENCH / "bench_classifier.py", [],
              ["--images", "8", "--single", "2", "--rounds", "1", "--size", "128", "--max-batch", "8"],
              classifier_metrics),
    Benchmark("signing", BENCH / "bench_signing.py", ["--runs", "50"], ["--runs", "5"], signing_metrics),
    Benchmark("audit", BENCH / "bench_audit.py", [],
              ["--records", "2000", "--pg-records", "1000", "--concurrency", "64"], audit_metrics),
    Benchmark("limits", BENCH / "bench_limits.py", [],
              ["--checks", "5000", "--redis-checks", "2000"], limits_metrics),
]


@dataclass
class Outcome:
    """How one benchmark's run went, and the rows read from it (a FAILED row when it failed)."""

    name: str
    command: str
    returncode: int | None
    seconds: float
    log: str
    data: dict[str, Any] | None = None
    metrics: list[Metric] = field(default_factory=list)
    failure: str | None = None

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "command": self.command, "returncode": self.returncode,
                "seconds": self.seconds, "log": self.log}


def _tail(path: Path, lines: int = 1) -> str:
    text = path.read_text(encoding="utf-8", errors="replace").strip().splitlines() if path.exists() else []
    return " / ".join(text[-lines:]).replace("|", "\\|")[:200] or "no output"


def run_benchmark(benchmark: Benchmark, out: Path, quick: bool) -> Outcome:
    """Run one benchmark in its own process; never raises for the benchmark's own failures."""
    log_path, json_path = out / "logs" / f"{benchmark.name}.log", out / "raw" / f"{benchmark.name}.json"
    json_path.unlink(missing_ok=True)
    command = benchmark.command(quick, json_path)
    shown = " ".join(["python3", suite_report.relative(Path(command[1])), *command[2:-2]])
    started = time.perf_counter()
    timeout = min(benchmark.timeout_s, 300.0) if quick else benchmark.timeout_s
    with log_path.open("w", encoding="utf-8") as log:
        try:
            returncode: int | None = subprocess.run(command, cwd=suite_report.ROOT, stdout=log, stderr=subprocess.STDOUT,
                                                    timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"}).returncode
        except subprocess.TimeoutExpired:
            returncode = None
            log.write(f"\nrun_all: stopped after {timeout:.0f} s\n")
    outcome = Outcome(benchmark.name, shown, returncode, time.perf_counter() - started, suite_report.relative(log_path))
    failure = _failure(returncode, json_path, log_path)
    if failure is None:
        outcome.data = json.loads(json_path.read_text(encoding="utf-8"))
        try:
            outcome.metrics = benchmark.extract(outcome.data)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            failure = f"its JSON lacks a figure: {type(exc).__name__}: {exc}"
        if not outcome.metrics and failure is None:
            failure = "its JSON lacks a figure: no rows"
    if failure is not None:
        outcome.failure = failure
        outcome.metrics = [Metric(benchmark.name, "benchmark failed", None, "", note=failure)]
    return outcome


def _failure(returncode: int | None, json_path: Path, log_path: Path) -> str | None:
    if returncode is None:
        return f"timed out; {_tail(log_path)}"
    if returncode != 0:
        return f"exit {returncode}: {_tail(log_path)}"
    if not json_path.exists():
        return f"wrote no JSON; {_tail(log_path)}"
    return None


def run_suite(benchmarks: Sequence[Benchmark], out: Path, quick: bool) -> list[Outcome]:
    """Run the benchmarks one after another (never in parallel: they would measure each other)."""
    (out / "logs").mkdir(parents=True, exist_ok=True)
    (out / "raw").mkdir(parents=True, exist_ok=True)
    outcomes = []
    for number, benchmark in enumerate(benchmarks, start=1):
        print(f"[{number}/{len(benchmarks)}] {benchmark.name} ...", end=" ", flush=True)
        outcome = run_benchmark(benchmark, out, quick)
        status = "FAILED" if outcome.failure else "ok"
        print(f"{status} in {outcome.seconds:.0f} s (log: {outcome.log})", flush=True)
        outcomes.append(outcome)
    return outcomes


def write_results(outcomes: list[Outcome], out: Path, quick: bool, machine: dict[str, Any]) -> dict[str, Path]:
    """latest.md, latest.json and latest.png from the outcomes; the chart is skipped without matplotlib."""
    machine["load_average_end"] = round(os.getloadavg()[0], 2)
    metrics = [metric for outcome in outcomes for metric in outcome.metrics]
    runs = [outcome.summary() for outcome in outcomes]
    paths = {"md": out / "latest.md", "json": out / "latest.json", "png": out / "latest.png"}
    paths["md"].write_text(suite_report.markdown(machine, metrics, TARGETS, runs, quick), encoding="utf-8")
    suite_report.write_json(paths["json"], machine, metrics, TARGETS, runs, quick)
    latency = next((o.data for o in outcomes if o.name == "latency" and o.data is not None), None)
    title = f"imagegate benchmarks, {machine['date']}, {machine['cores']} cores" + (" (--quick)" if quick else "")
    try:
        suite_report.write_chart(paths["png"], metrics, TARGETS, latency, title)
    except ImportError as exc:
        print(f"run_all: no chart ({exc}); install matplotlib (pip install -e '.[dev]')", file=sys.stderr)
        del paths["png"]
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test, not figures to quote")
    parser.add_argument("--out", type=Path, default=BENCH / "results", help="folder for the results")
    parser.add_argument("--only", nargs="+", choices=[b.name for b in BENCHMARKS], help="run only these benchmarks")
    args = parser.parse_args(argv)
    selected = [b for b in BENCHMARKS if not args.only or b.name in args.only]
    machine = suite_report.machine_info()
    print(f"run_all: {len(selected)} benchmarks{' (--quick)' if args.quick else ''} on {machine['cpu']}, "
          f"{machine['cores']} cores, load average {machine['load_average_start']}", flush=True)
    outcomes = run_suite(selected, args.out, args.quick)
    paths = write_results(outcomes, args.out, args.quick, machine)
    print("\n" + paths["md"].read_text(encoding="utf-8"))
    print("wrote " + ", ".join(suite_report.relative(path) for path in paths.values()))
    return 1 if any(outcome.failure for outcome in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
