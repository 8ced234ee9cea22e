"""The benchmark suite and the soak run produce their reports, and their verdicts catch what they claim.

No assertion here is about time: the benchmarks run at tiny sizes only to prove that every script's
`--json` feeds `run_all`'s table, JSON and chart, and that a failing benchmark is recorded and does
not stop the others. The soak runs for a few seconds against a real imagegate process; the checks
that do not depend on speed (only intended errors, one audit record per request, blocked prompts
never upstream, descriptors back to rest) must pass. Growth needs minutes, so it is judged by
`soak_verdict` on synthetic series instead, where a leak is known to be there or not.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import run_all  # noqa: E402
import soak_verdict as verdict  # noqa: E402
import suite_report  # noqa: E402

#: Sizes that only prove the plumbing (the classifier is left out: loading ViT-B-32 alone takes
#: longer than this whole file may; `run_all.py --quick` covers it).
TINY = {
    "latency": ["--requests", "40", "--concurrency", "1", "4"],
    "prompt_filter": ["--rounds", "1", "--no-paraphrase"],
    "signing": ["--runs", "2", "--size", "256"],
    "audit": ["--records", "300", "--concurrency", "16", "--record", "small", "--no-postgres"],
    "limits": ["--checks", "1000", "--redis-checks", "500", "--concurrency", "8"],
}
METRIC_KEYS = {"benchmark", "name", "value", "unit", "baseline", "baseline_label", "ratio", "target", "target_key", "met",
               "note"}
GROWTH_CHECKS = {"no memory growth (RSS)", "no file-descriptor growth"}


def script(folder: Path, name: str, body: str) -> Path:
    path = folder / f"{name}.py"
    path.write_text(body, encoding="utf-8")
    return path


def test_run_all_writes_table_json_and_chart_and_records_failures(tmp_path: Path) -> None:
    real = [replace(b, quick=TINY[b.name]) for b in run_all.BENCHMARKS if b.name in TINY]
    crashing = run_all.Benchmark("crashing", script(tmp_path, "crash", "print('boom')\nraise SystemExit(3)\n"), [], [],
                                 run_all.BENCHMARKS[0].extract)
    empty = run_all.Benchmark(
        "empty", script(tmp_path, "empty", "import sys\nopen(sys.argv[-1], 'w').write('{}')\n"), [], [],
        run_all.BENCHMARKS[0].extract,
    )
    out = tmp_path / "results"
    outcomes = run_all.run_suite([real[0], crashing, empty, *real[1:]], out, quick=True)
    paths = run_all.write_results(outcomes, out, True, suite_report.machine_info())

    document = json.loads(paths["json"].read_text())
    assert set(document) == {"machine", "quick", "runs", "metrics"}
    assert {"cpu", "cores", "ram_gib", "os", "python", "versions", "date", "commit"} <= set(document["machine"])
    assert "torch" in document["machine"]["versions"]
    assert [run["name"] for run in document["runs"]] == ["latency", "crashing", "empty", *[b.name for b in real[1:]]]
    by_benchmark: dict[str, list[dict]] = {}
    for metric in document["metrics"]:
        assert set(metric) == METRIC_KEYS
        by_benchmark.setdefault(metric["benchmark"], []).append(metric)

    # The failures are rows of their own, and every benchmark after them still ran.
    assert len(by_benchmark["crashing"]) == 1
    assert by_benchmark["crashing"][0]["name"] == "benchmark failed"
    assert by_benchmark["crashing"][0]["note"].startswith("exit 3: boom")
    assert by_benchmark["empty"][0]["name"] == "benchmark failed"
    assert "lacks a figure" in by_benchmark["empty"][0]["note"]
    for name in ("latency", "prompt filter", "signing", "audit", "limits"):
        rows = by_benchmark[name]
        assert any(row["value"] is not None for row in rows), name
        for row in rows:
            if row["target"] is not None and row["value"] is not None:
                assert isinstance(row["met"], bool)
                assert row["target"]["issue"] in range(2, 8)
    latency = {row["name"] for row in by_benchmark["latency"]}
    for concurrency in ("1", "4"):
        for quantile in ("p50", "p95", "p99"):
            assert f"added {quantile} at concurrency {concurrency}" in latency
        assert f"throughput at concurrency {concurrency}" in latency
    signing = {row["name"]: row for row in by_benchmark["signing"]}
    for fmt in ("PNG", "JPEG", "WEBP"):  # each format with the default ES256 and with Ed25519
        for name in (f"{fmt} 256x256: sign", f"{fmt} 256x256: sign, Ed25519"):
            assert signing[name]["target_key"] == "signing_vs_sha256" and signing[name]["ratio"] > 0
        assert signing[f"{fmt} 256x256: bytes added, Ed25519"]["value"] > 0

    table = paths["md"].read_text()
    assert "Machine: " in table and document["machine"]["commit"] in table
    assert "| crashing | benchmark failed |" in table and "FAILED" in table
    assert "| benchmark | metric | value | baseline | ratio | target | met |" in table
    assert paths["png"].read_bytes().startswith(b"\x89PNG")


def test_every_target_named_by_a_row_exists_and_each_benchmark_issue_has_one() -> None:
    assert {target.issue for target in run_all.TARGETS.values()} == {2, 3, 4, 5, 6, 7}
    source = (BENCH / "suite_metrics.py").read_text()
    for key in run_all.TARGETS:
        assert f'"{key}"' in source, f"target {key} is carried by no row"


def test_soak_short_run_reports_only_intended_errors_and_one_audit_record_each(tmp_path: Path) -> None:
    command = [sys.executable, str(BENCH / "soak.py"), "--seconds", "5", "--concurrency", "4",
               "--sample-every", "0.5", "--settle", "1", "--out", str(tmp_path)]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert finished.returncode in (0, 1), finished.stdout + finished.stderr
    report = json.loads((tmp_path / "soak.json").read_text())
    assert {"passed", "checks", "machine", "config", "requests", "counts", "latency", "samples", "at_rest",
            "upstream_calls"} <= set(report)
    assert set(report["counts"]) == set(report["config"]["expected"])  # every kind was sent
    assert report["samples"] and {"t", "rss_mib", "fds", "threads", "requests"} <= set(report["samples"][0])
    checks = {check["name"]: check for check in report["checks"]}
    for name in ("only the intended errors", "one audit record per request", "audit statuses match the responses",
                 "audit chain verifies", "upstream calls as expected", "file descriptors back to rest",
                 "gateway stops cleanly on SIGTERM"):
        assert checks[name]["ok"] is True, checks[name]
    assert GROWTH_CHECKS <= set(checks)
    failed = {name for name, check in checks.items() if check["ok"] is False}
    assert failed <= GROWTH_CHECKS and report["passed"] == (not failed)
    assert (tmp_path / "soak.md").read_text().startswith("# Soak run: ")
    assert (tmp_path / "soak.png").read_bytes().startswith(b"\x89PNG")


# -- the verdict, on series where the answer is known --------------------------------------------


def series(values: list[float]) -> tuple[list[float], list[float], float]:
    times = [float(t) for t in range(len(values))]
    return times, values, float(len(values))


def test_memory_growth_verdict_ignores_warmup_and_steps_but_flags_a_leak() -> None:
    warmup = [500 + 15 * i for i in range(20)]  # the first 20%: imports and arenas filling
    steady = warmup + [800 + (30 if i % 7 == 0 else 0) + (i > 40) * 20 for i in range(80)]  # a burst, a step
    found = verdict.trend(*series(steady))
    assert found is not None
    assert verdict.growth_check("rss", "MiB", found, verdict.rss_tolerance(found.first)).ok is True

    leaking = warmup + [800 + 2.5 * i for i in range(80)]  # 2.5 MiB per sample: 200 MiB over the run
    found = verdict.trend(*series(leaking))
    assert verdict.growth_check("rss", "MiB", found, verdict.rss_tolerance(found.first)).ok is False


def test_descriptor_verdict_tolerates_the_load_swing_but_flags_a_leak() -> None:
    concurrency = 16
    swinging = [12 + (i * 7) % (2 * concurrency) for i in range(100)]  # up to 2 sockets per request in flight
    found = verdict.trend(*series(swinging))
    assert verdict.growth_check("fds", "fds", found, verdict.fd_tolerance(concurrency)).ok is True

    leaking = [12 + (i * 7) % (2 * concurrency) + i // 3 for i in range(100)]  # one lost socket every 3 samples
    found = verdict.trend(*series(leaking))
    assert verdict.growth_check("fds", "fds", found, verdict.fd_tolerance(concurrency)).ok is False

    assert verdict.rest_check(13, 14).ok is True
    assert verdict.rest_check(13, 13 + verdict.FD_REST_TOLERANCE + 1, {"socket": 5}).ok is False


def test_too_short_a_run_is_not_judged_rather_than_passed() -> None:
    check = verdict.growth_check("rss", "MiB", verdict.trend(*series([1.0, 2.0, 3.0])), 10)
    assert check.ok is None
    assert verdict.passed([check]) is True
    assert verdict.passed([check, verdict.Check("x", False, "")]) is False


def test_response_audit_and_upstream_verdicts_catch_what_they_claim() -> None:
    expected = {"allowed": "200 ok", "blocked": "400 content_policy_violation"}
    fine = {"allowed": {"200 ok": 5}, "blocked": {"400 content_policy_violation": 2}}
    assert verdict.response_check(fine, expected).ok is True
    leaked = {"allowed": {"200 ok": 5}, "blocked": {"400 content_policy_violation": 1, "200 ok": 1}}
    result = verdict.response_check(leaked, expected)
    assert result.ok is False and "blocked: 200 ok" in result.detail
    crashed = {"allowed": {"200 ok": 4, "exception ServerDisconnectedError": 1}, "blocked": fine["blocked"]}
    assert verdict.response_check(crashed, expected).ok is False

    statuses = {"200": 5, "400": 2}
    assert all(c.ok for c in verdict.audit_checks(7, statuses, statuses, True, ""))
    lost = verdict.audit_checks(7, statuses, {"200": 4, "400": 2}, True, "")
    assert [c.ok for c in lost[:2]] == [False, False]
    relabelled = verdict.audit_checks(7, statuses, {"200": 6, "400": 1}, True, "")
    assert [c.ok for c in relabelled[:2]] == [True, False]
    assert verdict.audit_checks(7, statuses, None, None, "")[0].ok is False

    calls = {"generate": 5, "edit": 0, "fault": 1}
    assert verdict.upstream_check(calls, {"generate": 5, "fault": 1}).ok is True
    assert verdict.upstream_check(calls, {"generate": 7, "fault": 1}).ok is False  # blocked prompts went upstream
    assert verdict.upstream_check(calls, None).ok is False
