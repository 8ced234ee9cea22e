"""Writing the soak run's report: `soak.md` (the verdict and counts) and `soak.png` (the samples).

Pure formatting of the report dict `soak.py` builds; matplotlib is imported only for the chart,
with the Agg backend, and a missing matplotlib only means no chart.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import soak_verdict as verdict


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def markdown(report: dict[str, Any]) -> str:
    config, machine = report["config"], report["machine"]
    delay = config["upstream_delay_s"]
    lines = [
        f"# Soak run: {'PASSED' if report['passed'] else 'FAILED'}",
        "",
        f"{config['seconds'] / 60:.1f} minutes at concurrency {config['concurrency']}: {report['requests']} requests, "
        f"{report['throughput_rps']:.1f} requests/s. Upstream delays {delay[0]:.2f}-{delay[1]:.2f} s (real providers' "
        f"2-15 s scaled by {config['delay_scale']}). Classifier: {config['classifier']}.",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['ram_gib']} GiB RAM; {machine['os']}; Python "
        f"{machine['python']}; run {machine['date']} at commit {machine['commit']}, load average "
        f"{machine['load_average_start']} at the start.",
        "",
        "| check | verdict | detail |",
        "|---|---|---|",
    ]
    for check in report["checks"]:
        mark = {True: "ok", False: "**FAILED**", None: "not judged"}[check["ok"]]
        lines.append(f"| {check['name']} | {mark} | {check['detail'].replace('|', '/')} |")
    lines += ["", "| kind | outcome | count | intended | p50 s | p95 s |", "|---|---|---|---|---|---|"]
    for kind, outcomes in report["counts"].items():
        latency = report["latency"][kind]
        for outcome, count in outcomes.items():
            intended = "yes" if outcome == config["expected"][kind] else "**no**"
            lines.append(f"| {kind} | {outcome} | {count} | {intended} | {latency['p50_s']:.2f} | {latency['p95_s']:.2f} |")
    samples = report["samples"]
    if samples:
        rss = [s["rss_mib"] for s in samples]
        fds = [s["fds"] for s in samples]
        lines += ["", f"Gateway samples ({len(samples)}, every {config['sample_every_s']} s): RSS {min(rss):.0f}-"
                      f"{max(rss):.0f} MiB (median {statistics.median(rss):.0f}), open fds {min(fds)}-{max(fds)}, "
                      f"threads {min(s['threads'] for s in samples)}-{max(s['threads'] for s in samples)}."]
    if report["unexpected_examples"]:
        lines += ["", "Unexpected responses (first ones):", ""] + [f"- {e}" for e in report["unexpected_examples"]]
    return "\n".join(lines) + "\n"


def write_chart(path: Path, report: dict[str, Any]) -> bool:
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = report["samples"]
    scale, unit = (60, "minutes") if report["wall_s"] > 120 else (1, "seconds")
    times = [s["t"] / scale for s in samples]
    figure, axes = plt.subplots(1, 2, figsize=(12, 4), constrained_layout=True)
    for axis, key, label in ((axes[0], "rss_mib", "resident memory (MiB)"), (axes[1], "fds", "open file descriptors")):
        axis.plot(times, [s[key] for s in samples], marker=".")
        axis.axvspan(0, verdict.WARMUP_FRACTION * report["wall_s"] / scale, color="#dddddd", label="warm-up (not judged)")
        axis.set_xlabel(unit)
        axis.set_title(label)
        axis.set_ylim(bottom=0)
        axis.legend(fontsize="small")
    figure.suptitle(f"imagegate soak: {report['requests']} requests at concurrency {report['config']['concurrency']}")
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True
