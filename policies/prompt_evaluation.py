"""Measuring the prompt filter on a labelled set: recall per category and per obfuscation class,
false-positive rate on harmless prompts, and recall on prompts involving minors.

A labelled row is a mapping with at least "prompt" and "label" ("safe" or a category); optional
"obfuscation" (leet, homoglyph, zero_width, spaced, fullwidth, combining, stretched, language,
euphemism) and "language". A prompt counts as detected when the verdict is not "allow"; for
prompts involving minors the stricter "blocked as sexual_minors" is reported too.

What this module must never do: read files or print (the CLI does that), or tune anything to
the set it measures.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from policies.decisions import Action
from policies.prompt_filter import PromptFilter, PromptVerdict
from policies.prompt_normalise import prepare

__all__ = ["EvaluationReport", "calibrate_paraphrase_threshold", "evaluate", "paraphrase_safe_scores"]

SAFE = "safe"


@dataclass
class EvaluationReport:
    """Counts behind the report; rates are derived properties."""

    total: int = 0
    unsafe_total: int = 0
    unsafe_detected: int = 0
    safe_total: int = 0
    false_positives: int = 0
    minors_total: int = 0
    minors_blocked_as_minors: int = 0
    by_category: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    by_obfuscation: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    by_language: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    category_correct: int = 0
    misses: list[dict[str, Any]] = field(default_factory=list)
    false_positive_rows: list[dict[str, Any]] = field(default_factory=list)

    @staticmethod
    def _rate(hit: int, total: int) -> float:
        return hit / total if total else 1.0

    @property
    def unsafe_recall(self) -> float:
        return self._rate(self.unsafe_detected, self.unsafe_total)

    @property
    def false_positive_rate(self) -> float:
        return self.false_positives / self.safe_total if self.safe_total else 0.0

    @property
    def minors_recall(self) -> float:
        return self._rate(self.minors_blocked_as_minors, self.minors_total)

    def category_recall(self) -> dict[str, float]:
        return {key: self._rate(hit, total) for key, (hit, total) in sorted(self.by_category.items())}

    def obfuscation_recall(self) -> dict[str, float]:
        return {key: self._rate(hit, total) for key, (hit, total) in sorted(self.by_obfuscation.items())}

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompts": self.total,
            "unsafe": self.unsafe_total,
            "safe": self.safe_total,
            "unsafe_recall": round(self.unsafe_recall, 4),
            "false_positive_rate": round(self.false_positive_rate, 4),
            "minors_recall": round(self.minors_recall, 4),
            "category_accuracy": round(self._rate(self.category_correct, self.unsafe_detected), 4),
            "recall_by_category": {
                key: {"recall": round(self._rate(hit, total), 4), "detected": hit, "total": total}
                for key, (hit, total) in sorted(self.by_category.items())
            },
            "recall_by_obfuscation": {
                key: {"recall": round(self._rate(hit, total), 4), "detected": hit, "total": total}
                for key, (hit, total) in sorted(self.by_obfuscation.items())
            },
            "recall_by_language": {
                key: {"recall": round(self._rate(hit, total), 4), "detected": hit, "total": total}
                for key, (hit, total) in sorted(self.by_language.items())
            },
        }


def evaluate(prompt_filter: PromptFilter, rows: Iterable[Mapping[str, Any]]) -> EvaluationReport:
    """Run the filter over labelled rows and count what it caught and what it wrongly stopped."""
    report = EvaluationReport()
    for row in rows:
        label = str(row["label"])
        texts = {"prompt": str(row["prompt"])}
        if row.get("negative_prompt"):
            texts["negative_prompt"] = str(row["negative_prompt"])
        verdict: PromptVerdict = prompt_filter.check(texts)
        detected = verdict.action is not Action.ALLOW
        report.total += 1
        if label == SAFE:
            report.safe_total += 1
            if detected:
                report.false_positives += 1
                report.false_positive_rows.append({**row, "verdict": verdict.to_dict()})
            continue
        report.unsafe_total += 1
        report.unsafe_detected += detected
        report.category_correct += detected and verdict.category == label
        report.by_category[label][0] += detected
        report.by_category[label][1] += 1
        obfuscation = row.get("obfuscation")
        if obfuscation:
            report.by_obfuscation[str(obfuscation)][0] += detected
            report.by_obfuscation[str(obfuscation)][1] += 1
        language = str(row.get("language", "en"))
        report.by_language[language][0] += detected
        report.by_language[language][1] += 1
        if label == "sexual_minors":
            report.minors_total += 1
            report.minors_blocked_as_minors += (
                verdict.action is Action.BLOCK and verdict.category == "sexual_minors"
            )
        if not detected or (label == "sexual_minors" and verdict.category != "sexual_minors"):
            report.misses.append({**row, "verdict": verdict.to_dict()})
    return report


def paraphrase_safe_scores(lexical: PromptFilter, matcher: Any, prompts: Iterable[str]) -> list[float]:
    """The paraphrase scores (`matcher`: a `policies.paraphrase.ParaphraseMatcher`) of the harmless
    `prompts` that the lexical layers of `lexical` allow, each scored on the text the filter hands
    the layer (the prompt as normalised, without leet folding): what `calibrate_paraphrase_threshold`
    reads. 0.0 where no unsafe example won."""
    allowed = [text for text in prompts if lexical.check_text(text).action is Action.ALLOW]
    return [match.score if match else 0.0 for match in matcher.scores([prepare(text).plain for text in allowed])]


def calibrate_paraphrase_threshold(
    safe_scores: Iterable[float], *, max_false_positive_rate: float = 0.0, margin: float = 0.01
) -> float:
    """The lowest paraphrase-score threshold that keeps the paraphrase layer's false positives on
    harmless prompts (those the lexical layers allow) at or under `max_false_positive_rate`.

    `safe_scores` are the paraphrase scores of labelled harmless prompts (0.0 where no unsafe
    example won). The answer is rounded up to two decimals, plus `margin`.
    """
    scores = sorted((float(score) for score in safe_scores), reverse=True)
    if not scores:
        return 0.5
    allowed = int(max_false_positive_rate * len(scores))
    boundary = scores[allowed] if allowed < len(scores) else 0.0
    return min(1.0, round(boundary + margin + 0.005, 2))
