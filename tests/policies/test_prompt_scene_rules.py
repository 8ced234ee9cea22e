"""The scene rules and terms written from the misses of the round2 and round3 dev sets and of the
fourth round's probes (tests/data/prompt_round4.jsonl), each with
the unsafe prompts and harmless look-alikes written for it (`tests/data/prompt_rule_examples.jsonl`): the
unsafe ones are caught in their category by that rule (or, for a single term, in its category);
the look-alikes pass."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from policies.decisions import Action
from policies.prompt_filter import PromptFilter
from policies.prompt_lexicon import CATEGORIES

EXAMPLES_FILE = Path(__file__).resolve().parents[1] / "data" / "prompt_rule_examples.jsonl"
EXAMPLES = [json.loads(line) for line in EXAMPLES_FILE.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def prompt_filter() -> PromptFilter:
    return PromptFilter()


def test_every_named_rule_exists_and_has_both_kinds_of_example(prompt_filter: PromptFilter) -> None:
    rule_ids = {rule.rule_id for rule in prompt_filter.lexicon.rules}
    named = {row["rule"] for row in EXAMPLES if row["rule"].count(".") == 1 and row["rule"].split(".")[0] in CATEGORIES}
    assert named, "no rule examples"
    assert named <= rule_ids, sorted(named - rule_ids)
    kinds = Counter((row["rule"], row["label"] == "safe") for row in EXAMPLES)
    for rule in named:
        assert kinds[(rule, False)] >= 2 and kinds[(rule, True)] >= 2, rule


@pytest.mark.parametrize("row", EXAMPLES, ids=[f"{row['rule']}:{row['label']}:{index}" for index, row in enumerate(EXAMPLES)])
def test_rule_example(prompt_filter: PromptFilter, row: dict[str, str]) -> None:
    verdict = prompt_filter.check_text(row["prompt"])
    if row["label"] == "safe":
        assert verdict.action is Action.ALLOW, verdict.to_dict()
        return
    assert verdict.category == row["label"], verdict.to_dict()
    assert verdict.action is not Action.ALLOW
    if any(rule.rule_id == row["rule"] for rule in prompt_filter.lexicon.rules):
        assert row["rule"] in {reason.rule_id for reason in verdict.reasons}, verdict.to_dict()
