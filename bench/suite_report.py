"""Writing the benchmark suite's results: the machine, the Markdown table, the JSON and the chart.

Figures only mean something next to the machine they were measured on, so every report starts with
it (CPU, cores, memory, OS, Python and library versions, the git commit and the load average,
since a shared machine is the usual source of noise). matplotlib is imported only to draw the
chart, with the Agg backend, so a machine without a display works.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from suite_metrics import Metric, Target

ROOT = Path(__file__).resolve().parents[1]
VERSIONED = ("torch", "aiohttp", "open-clip-torch", "c2pa-python", "asyncpg", "redis")


def _first_line_with(path: str, prefix: str) -> str | None:
    try:
        for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith(prefix):
                return line.split(":", 1)[1].strip() if ":" in line else line.split("=", 1)[1].strip().strip('"')
    except OSError:
        return None
    return None


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_info() -> dict[str, Any]:
    """What the figures were measured on; read from /proc where it exists (Linux), else `platform`."""
    mem_kb = _first_line_with("/proc/meminfo", "MemTotal")
    commit = _git("rev-parse", "--short=12", "HEAD") or "unknown"
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    return {
        "cpu": _first_line_with("/proc/cpuinfo", "model name") or platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "ram_gib": round(int(mem_kb.split()[0]) / 1024**2, 1) if mem_kb else None,
        "os": _first_line_with("/etc/os-release", "PRETTY_NAME=") or platform.platform(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": {package: _version(package) for package in VERSIONED},
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit + (" (with uncommitted changes)" if dirty else ""),
        "load_average_start": round(os.getloadavg()[0], 2),
    }


def _number(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.3g}" if abs(value) >= 0.01 else f"{value:.2g}"
    return f"{text} {unit}".strip()


def _verdict(met: bool | None, target: Target | None) -> str:
    if target is None:
        return ""
    if met is None:
        return "not measured"
    return "met" if met else "**not met**"


def markdown(machine: dict[str, Any], metrics: list[Metric], targets: dict[str, Target], runs: list[dict[str, Any]],
             quick: bool) -> str:
    """The table the README quotes: machine first, then one row per figure, then how each run went."""
    versions = ", ".join(f"{name} {version}" for name, version in machine["versions"].items())
    lines = [
        "# imagegate benchmarks" + (" (--quick: smoke-test sizes, not figures to quote)" if quick else ""),
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['ram_gib']} GiB RAM; {machine['os']} "
        f"(kernel {machine['kernel']}); Python {machine['python']}; {versions}.",
        f"Run {machine['date']} at commit {machine['commit']}; load average {machine['load_average_start']} at the "
        f"start, {machine.get('load_average_end', '?')} at the end.",
        "",
        "Every ratio is value / baseline, both measured in the same run. Targets are the issues' (issue number in "
        "brackets).",
        "",
        "| benchmark | metric | value | baseline | ratio | target | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for metric in metrics:
        target = targets.get(metric.target_key) if metric.target_key else None
        met = target.met(metric.value, metric.ratio) if target else None
        baseline = f"{_number(metric.baseline, metric.unit)} ({metric.baseline_label})" if metric.baseline else "-"
        ratio = f"{metric.ratio:.2f}x" if metric.ratio is not None else "-"
        target_text = f"{target.text} (#{target.issue})" if target else "-"
        value = _number(metric.value, metric.unit) if metric.value is not None else f"- ({metric.note})"
        if metric.value is not None and metric.note:
            value += f"; {metric.note}"
        verdict = "FAILED" if metric.name == "benchmark failed" else _verdict(met, target)
        lines.append(f"| {metric.benchmark} | {metric.name} | {value} | {baseline} | {ratio} | {target_text} | {verdict} |")
    lines += ["", "| benchmark | command | exit | seconds | log |", "|---|---|---|---|---|"]
    for run in runs:
        lines.append(f"| {run['name']} | `{run['command']}` | {run['returncode']} | {run['seconds']:.0f} | "
                     f"{run['log']} |")
    return "\n".join(lines) + "\n"


def write_json(path: Path, machine: dict[str, Any], metrics: list[Metric], targets: dict[str, Target],
               runs: list[dict[str, Any]], quick: bool) -> None:
    document = {
        "machine": machine,
        "quick": quick,
        "runs": runs,
        "metrics": [metric.to_dict(targets) for metric in metrics],
    }
    path.write_text(json.dumps(document, indent=2, default=str))


def write_chart(path: Path, metrics: list[Metric], targets: dict[str, Target], latency: dict[str, Any] | None,
                title: str) -> None:
    """Three kinds of panel: latency percentiles per concurrency, throughput, ratio to target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    concurrencies = list(latency) if latency else []
    figure = plt.figure(figsize=(16, 11), constrained_layout=True)
    top, bottom = figure.subfigures(2, 1)  # separate grids: long labels below must not squeeze the top
    names = ("direct upstream", "bare aiohttp proxy", "imagegate")
    colours = {"direct upstream": "#9e9e9e", "bare aiohttp proxy": "#4c78a8", "imagegate": "#f58518"}
    if concurrencies:
        for axis, concurrency in zip(top.subplots(1, len(concurrencies), squeeze=False)[0], concurrencies):
            _latency_panel(axis, latency[concurrency], names, colours, f"latency at concurrency {concurrency}")
    else:
        axis = top.subplots()
        axis.text(0.5, 0.5, "latency benchmark failed: see latest.md", ha="center", va="center")
        axis.set_axis_off()
    left, right = bottom.subplots(1, 2, width_ratios=[1, 2])
    _throughput_panel(left, latency or {}, names, colours)
    _target_panel(right, metrics, targets)
    figure.suptitle(title)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _latency_panel(axis: Any, rows: dict[str, Any], names: tuple[str, ...], colours: dict[str, str], title: str) -> None:
    quantiles = ("p50", "p95", "p99")
    width = 0.8 / len(names)
    for offset, name in enumerate(names):
        values = [rows[name][f"{q}_ms"] for q in quantiles]
        positions = [i + (offset - 1) * width for i in range(len(quantiles))]
        axis.bar(positions, values, width, label=name, color=colours[name])
    axis.set_xticks(range(len(quantiles)), quantiles)
    axis.set_ylabel("ms")
    axis.set_title(title)
    axis.legend(fontsize="small")


def _throughput_panel(axis: Any, latency: dict[str, Any], names: tuple[str, ...], colours: dict[str, str]) -> None:
    concurrencies = list(latency)
    width = 0.8 / len(names)
    for offset, name in enumerate(names):
        values = [latency[c][name]["throughput_rps"] for c in concurrencies]
        axis.bar([i + (offset - 1) * width for i in range(len(concurrencies))], values, width, label=name,
                 color=colours[name])
    axis.set_xticks(range(len(concurrencies)), [f"c={c}" for c in concurrencies])
    axis.set_ylabel("requests/s")
    axis.set_title("throughput")
    axis.legend(fontsize="small")


def _target_panel(axis: Any, metrics: list[Metric], targets: dict[str, Target]) -> None:
    labels, values, colours = [], [], []
    for metric in metrics:
        target = targets.get(metric.target_key) if metric.target_key else None
        attainment = target.attainment(metric.value, metric.ratio) if target else None
        if attainment is None:
            continue
        labels.append(f"{metric.benchmark}: {metric.name}")
        values.append(attainment)
        colours.append("#54a24b" if attainment >= 1 else "#e45756")
    axis.barh(range(len(values)), values, color=colours)
    axis.set_yticks(range(len(values)), labels, fontsize="small")
    axis.invert_yaxis()
    axis.axvline(1.0, color="black", linewidth=1)
    axis.set_xscale("log")
    axis.set_xlabel("ratio to target (>= 1: met; log scale)")
    axis.set_title("every other figure against its issue's target")
    if not values:
        axis.text(0.5, 0.5, "no figure with a target was measured", transform=axis.transAxes, ha="center")


def relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)
