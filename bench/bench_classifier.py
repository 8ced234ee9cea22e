"""Benchmark of the image classifier on the real ViT-B-32 architecture (random weights, same cost).

Measures images per second for one-at-a-time classification versus the batching runner under 8 and
32 concurrent asyncio requests, the runner versus a bare `model.encode_image` loop on the very same
batches, and the event loop's lag meanwhile (a ticker coroutine that sleeps `--lag-interval-ms` and
records how late it wakes). Prints a table with ratios. Targets from issue 4: batching >= 1.5x
one-at-a-time, runner within 10% of the bare loop, loop lag p99 < 20 ms.

The probe interval is 5 ms by default: fine enough for a 20 ms target, and cheap. A 1 ms probe wakes
the loop 1,000 times a second, and on 2 cores that alone took 3-4% of the runner's throughput
(runner/bare 0.88-0.90 with it, 0.92-0.93 with a 5 ms probe, 0.93-0.94 with none; 32 clients, same batches).

Run: python3 bench/bench_classifier.py [--images 64] [--single 16] [--rounds 3] [--threads 2]
                                       [--decode-threads 1] [--lag-interval-ms 5] [--json PATH]
It must never be imported by tests or make timed assertions; it only reports.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from classifiers.classifier import ImageClassifier, load_classifier  # noqa: E402
from classifiers.errors import ImageDecodeError  # noqa: E402
from classifiers.runner import BatchingRunner  # noqa: E402
from classifiers.settings import ClassifierSettings  # noqa: E402
from classifiers.verdict import ImageVerdict  # noqa: E402


def make_images(count: int, size: int, seed: int = 0) -> list[bytes]:
    """Distinct PNGs: smooth colour gradients plus noise (realistic decode cost, not all-constant)."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:size, 0:size] / size
    images = []
    for _ in range(count):
        a, b, c = rng.uniform(0, 255, 3), rng.uniform(-200, 200, 3), rng.uniform(-200, 200, 3)
        pixels = a + b * xs[..., None] + c * ys[..., None] + rng.normal(0, 12, (size, size, 3))
        out = io.BytesIO()
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(out, format="PNG")
        images.append(out.getvalue())
    return images


class RecordingClassifier:
    """Passes batches to the real classifier and remembers each batch's images."""

    def __init__(self, inner: ImageClassifier) -> None:
        self.inner = inner
        self.batches: list[list[bytes]] = []
        self.compute_seconds = 0.0  # embedding and scoring of prepared batches (worker thread)

    def classify_outcomes(self, images: Sequence[bytes]) -> list[ImageVerdict | ImageDecodeError]:
        self.batches.append(list(images))
        return self.inner.classify_outcomes(images)

    # The runner's pipeline (decode ahead on a second thread, embed batches in the worker).
    def prepare_outcome(self, image: bytes) -> tuple[bytes, torch.Tensor | ImageDecodeError]:
        return image, self.inner.prepare_outcome(image)

    def classify_prepared(
        self, prepared: Sequence[tuple[bytes, torch.Tensor | ImageDecodeError]]
    ) -> list[ImageVerdict | ImageDecodeError]:
        self.batches.append([image for image, _ in prepared])
        started = time.perf_counter()
        try:
            return self.inner.classify_prepared([tensor for _, tensor in prepared])
        finally:
            self.compute_seconds += time.perf_counter() - started


@dataclass
class RunnerResult:
    concurrency: int
    images: int
    seconds: float
    batches: list[list[bytes]]
    lag_ms: list[float]
    #: Worker-thread time (waiting for prepared images, then computing) and its computing part.
    busy_seconds: float = 0.0
    compute_seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.images / self.seconds


LAG_INTERVAL_S = 0.005


async def ticker(lags: list[float], stop: asyncio.Event, interval: float | None = None) -> None:
    interval = LAG_INTERVAL_S if interval is None else interval
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        expected = loop.time() + interval
        await asyncio.sleep(interval)
        lags.append(max(0.0, (loop.time() - expected) * 1000.0))


async def run_runner(
    classifier: ImageClassifier,
    images: list[bytes],
    concurrency: int,
    max_batch: int,
    max_wait_ms: float,
    decode_threads: int = 1,
) -> RunnerResult:
    recording = RecordingClassifier(classifier)
    runner = BatchingRunner(recording, max_batch=max_batch, max_wait_ms=max_wait_ms, decode_threads=decode_threads)
    await runner.start()
    await runner.classify(images[0])  # warm the worker thread
    recording.batches.clear()
    recording.compute_seconds = 0.0
    busy_before = runner.busy_seconds
    queue = list(reversed(images))
    lags: list[float] = []
    stop = asyncio.Event()
    tick = asyncio.create_task(ticker(lags, stop))

    async def client() -> None:
        while queue:
            await runner.classify(queue.pop())

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    stop.set()
    await tick
    await runner.close()
    return RunnerResult(concurrency, len(images), seconds, recording.batches, lags,
                        runner.busy_seconds - busy_before, recording.compute_seconds)


def bare_encode_seconds(classifier: ImageClassifier, batches: list[list[bytes]]) -> float:
    """A bare `model.encode_image` loop on the same batches: decode and preprocess not timed."""
    loaded = classifier.loaded
    tensors = [torch.stack([loaded.preprocess(classifier.decode(data)) for data in batch]) for batch in batches]
    started = time.perf_counter()
    with torch.inference_mode():
        for pixels in tensors:
            loaded.model.encode_image(pixels)  # type: ignore[operator]
    return time.perf_counter() - started


def direct_batch_seconds(classifier: ImageClassifier, batches: list[list[bytes]]) -> float:
    """`classify_batch` called directly on the same batches (decode + preprocess + encode + score)."""
    started = time.perf_counter()
    for batch in batches:
        classifier.classify_batch(batch)
    return time.perf_counter() - started


def time_split(result: RunnerResult, bare_seconds: float) -> dict[str, float]:
    """Where the runner's wall time went, per batch: computing (against the bare loop on the same
    batches), the worker waiting for images still being decoded, and the time between batches
    (collecting the next batch, up to `max_wait_ms`, and handing results back to the callers)."""
    count = max(1, len(result.batches))
    return {
        "compute": result.compute_seconds / count * 1000.0,
        "bare": bare_seconds / count * 1000.0,
        "decode_wait": (result.busy_seconds - result.compute_seconds) / count * 1000.0,
        "between": (result.seconds - result.busy_seconds) / count * 1000.0,
    }


def per_batch_medians(splits: list[dict[str, float]]) -> dict[str, float]:
    """Each `time_split` figure's median over the rounds."""
    return {key: statistics.median(split[key] for split in splits) for key in splits[0]}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return float(np.percentile(np.asarray(values), q))


def summarise(values: list[float]) -> str:
    return f"{statistics.median(values):7.2f} (best {max(values):6.2f})"


def median_ratio(numerators: list[float], denominators: list[float]) -> float:
    """Median of per-round ratios: each round's pair ran back to back, so drift cancels."""
    return statistics.median(a / b for a, b in zip(numerators, denominators, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64, help="images per runner scenario and round")
    parser.add_argument("--single", type=int, default=16, help="images for the one-at-a-time baselines")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per scenario (median and best reported)")
    parser.add_argument("--size", type=int, default=256, help="side of the synthetic PNGs")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads")
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--max-wait-ms", type=float, default=10.0)
    parser.add_argument("--decode-threads", type=int, default=1, help="the runner's decoding threads")
    parser.add_argument("--lag-interval-ms", type=float, default=5.0, help="event-loop lag probe interval")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    global LAG_INTERVAL_S
    LAG_INTERVAL_S = args.lag_interval_ms / 1000.0

    settings = ClassifierSettings(
        model="ViT-B-32", pretrained=None, allow_random_weights=True, torch_threads=args.threads, batch_size=args.max_batch
    )
    t0 = time.perf_counter()
    classifier = load_classifier(settings)
    print(
        f"model {classifier.model_label}, torch {torch.__version__}, {torch.get_num_threads()} torch threads, "
        f"{os.cpu_count()} CPUs, loaded in {time.perf_counter() - t0:.1f}s, load average {os.getloadavg()[0]:.2f}; "
        f"{'UNCALIBRATED' if not classifier.calibrated else 'calibrated'} (benchmark only)"
    )
    images = make_images(max(args.images, args.single), args.size)
    for size in sorted({1, min(8, args.max_batch), args.max_batch}):  # warm every batch shape
        classifier.classify_batch(images[:size])

    single_rates: list[float] = []
    runner_single: list[RunnerResult] = []
    scenario: dict[int, list[tuple[float, float, float, RunnerResult]]] = {c: [] for c in args.concurrency}
    for _ in range(args.rounds):
        started = time.perf_counter()
        for data in images[: args.single]:
            classifier.classify_batch([data])
        single_rates.append(args.single / (time.perf_counter() - started))
        runner_single.append(asyncio.run(run_runner(classifier, images[: args.single], 8, 1, 0.0)))
        for concurrency in args.concurrency:
            result = asyncio.run(
                run_runner(
                    classifier, images[: args.images], concurrency, args.max_batch, args.max_wait_ms, args.decode_threads
                )
            )
            bare = bare_encode_seconds(classifier, result.batches)
            direct = direct_batch_seconds(classifier, result.batches)
            scenario[concurrency].append((result.rate, result.images / bare, result.images / direct, result))

    def per_round(numerators: list[float], denominators: list[float]) -> str:
        ratios = [a / b for a, b in zip(numerators, denominators, strict=True)]
        return f"{statistics.median(ratios):.2f} (rounds: {', '.join(f'{r:.2f}' for r in ratios)})"

    rows: list[tuple[str, str]] = []
    rows.append(("one-at-a-time, direct classify_batch([x])", f"{summarise(single_rates)} img/s"))
    rates = [r.rate for r in runner_single]
    lags = [lag for r in runner_single for lag in r.lag_ms]
    figures: dict[str, Any] = {
        "model": classifier.model_label, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "rounds": args.rounds, "images": args.images, "single": args.single, "size": args.size,
        "max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms,
        "decode_threads": args.decode_threads, "lag_interval_ms": args.lag_interval_ms,
        "single_img_s": statistics.median(single_rates),
        "single_runner_img_s": statistics.median(rates),
        "single_runner_lag_p99_ms": percentile(lags, 99),
        "scenarios": {},
    }
    rows.append(
        (
            "one-at-a-time via runner (max_batch=1, 8 clients)",
            f"{summarise(rates)} img/s   vs direct {per_round(rates, single_rates)}   "
            f"loop lag p50 {percentile(lags, 50):.1f} ms, p99 {percentile(lags, 99):.1f} ms",
        )
    )
    for concurrency, results in scenario.items():
        runner_rates = [r[0] for r in results]
        bare_rates = [r[1] for r in results]
        direct_rates = [r[2] for r in results]
        sizes = [len(batch) for r in results for batch in r[3].batches]
        lags = [lag for r in results for lag in r[3].lag_ms]
        figures["scenarios"][str(concurrency)] = {
            "runner_img_s": statistics.median(runner_rates),
            "bare_img_s": statistics.median(bare_rates),
            "direct_img_s": statistics.median(direct_rates),
            "speedup_vs_single": median_ratio(runner_rates, single_rates),
            "runner_vs_bare": median_ratio(runner_rates, bare_rates),
            "runner_vs_direct": median_ratio(runner_rates, direct_rates),
            "mean_batch": statistics.mean(sizes),
            "lag_p50_ms": percentile(lags, 50),
            "lag_p99_ms": percentile(lags, 99),
            "per_batch_ms": per_batch_medians([time_split(r[3], r[3].images / r[1]) for r in results]),
        }
        rows.append(
            (
                f"runner, {concurrency} concurrent (max_batch={args.max_batch}, wait {args.max_wait_ms:g} ms, "
                f"{args.decode_threads} decode thread{'s' if args.decode_threads > 1 else ''})",
                f"{summarise(runner_rates)} img/s   mean batch {statistics.mean(sizes):.1f}",
            )
        )
        rows.append(("    speed-up over one-at-a-time (same round)", per_round(runner_rates, single_rates)))
        rows.append(
            ("    same batches, bare model.encode_image loop", f"{summarise(bare_rates)} img/s   runner/bare {per_round(runner_rates, bare_rates)}")
        )
        rows.append(
            (
                "    same batches, classify_batch direct (no runner)",
                f"{summarise(direct_rates)} img/s   runner/direct {per_round(runner_rates, direct_rates)}",
            )
        )
        per_batch = figures["scenarios"][str(concurrency)]["per_batch_ms"]
        rows.append(
            (
                "    per batch: runner's compute (bare loop's), decode wait, gap",
                f"{per_batch['compute']:.0f} ms ({per_batch['bare']:.0f} ms), {per_batch['decode_wait']:.0f} ms, "
                f"{per_batch['between']:.0f} ms (medians over rounds)",
            )
        )
        rows.append(
            (
                f"    event-loop lag meanwhile ({args.lag_interval_ms:g} ms probe)",
                f"p50 {percentile(lags, 50):.1f} ms, p99 {percentile(lags, 99):.1f} ms, "
                f"max {max(lags, default=float('nan')):.1f} ms ({len(lags)} ticks)",
            )
        )
    width = max(len(name) for name, _ in rows)
    print(f"{args.rounds} rounds; img/s as median (best); ratios: median of per-round ratios; load average now {os.getloadavg()[0]:.2f}")
    print(f"{'scenario'.ljust(width)}  result")
    print("-" * (width + 80))
    for name, value in rows:
        print(f"{name.ljust(width)}  {value}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
