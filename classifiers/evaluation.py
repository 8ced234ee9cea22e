"""Binary classification metrics (precision, recall, F1, ROC AUC) and the labelled-folder layout.

A labelled folder is `DIR/<category>/*.png|jpg|jpeg|webp` plus `DIR/safe/...` for negatives; an image
is a positive for its folder's category and a negative for every other category. Used both to
report a trained head's validation metrics and by `imagegate classifier eval`.

Must never: import torch, decode images, or report a metric that is undefined as a number (ROC AUC
without both classes is None, not 0.5).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from classifiers.errors import TrainingDataError

SAFE_LABEL = "safe"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


@dataclass(frozen=True, slots=True)
class LabelledImage:
    path: Path
    label: str  # a category name, or "safe"


def scan_labelled_folder(data_dir: Path) -> list[LabelledImage]:
    """Every image under `data_dir/<label>/`, sorted; refuses a folder without labels or images."""
    if not data_dir.is_dir():
        raise TrainingDataError(f"{data_dir} is not a folder")
    items: list[LabelledImage] = []
    for label_dir in sorted(path for path in data_dir.iterdir() if path.is_dir()):
        for path in sorted(label_dir.iterdir()):
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                items.append(LabelledImage(path, label_dir.name))
    if not items:
        raise TrainingDataError(f"{data_dir} holds no images in <label>/ sub-folders")
    return items


def roc_auc(labels: Sequence[bool], scores: Sequence[float]) -> float | None:
    """Area under the ROC curve (Mann-Whitney U, ties counted half); None without both classes."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    positives = int(y.sum())
    negatives = int(y.size - positives)
    if positives == 0 or negatives == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(s.size, dtype=np.float64)
    sorted_scores = s[order]
    start = 0
    while start < s.size:  # average ranks over ties
        end = start
        while end + 1 < s.size and sorted_scores[end + 1] == sorted_scores[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2.0 + 1.0
        start = end + 1
    rank_sum = float(ranks[y].sum())
    return (rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives)


@dataclass(frozen=True, slots=True)
class BinaryMetrics:
    precision: float | None
    recall: float | None
    f1: float | None
    accuracy: float | None
    roc_auc: float | None
    positives: int
    negatives: int
    true_positives: int
    false_positives: int
    false_negatives: int
    true_negatives: int

    def to_dict(self) -> dict[str, Any]:
        return {key: (round(value, 4) if isinstance(value, float) else value) for key, value in asdict(self).items()}


def binary_metrics(labels: Sequence[bool], predicted: Sequence[bool], scores: Sequence[float]) -> BinaryMetrics:
    """Metrics of one category's predictions; a ratio with a zero denominator is None."""
    y = np.asarray(labels, dtype=bool)
    p = np.asarray(predicted, dtype=bool)
    tp = int((y & p).sum())
    fp = int((~y & p).sum())
    fn = int((y & ~p).sum())
    tn = int((~y & ~p).sum())
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = (
        2 * precision * recall / (precision + recall)
        if precision is not None and recall is not None and precision + recall > 0
        else (0.0 if precision is not None and recall is not None else None)
    )
    accuracy = (tp + tn) / y.size if y.size else None
    return BinaryMetrics(
        precision=precision,
        recall=recall,
        f1=f1,
        accuracy=accuracy,
        roc_auc=roc_auc(y.tolist(), list(scores)),
        positives=int(y.sum()),
        negatives=int((~y).sum()),
        true_positives=tp,
        false_positives=fp,
        false_negatives=fn,
        true_negatives=tn,
    )


class VerdictLike(Protocol):
    @property
    def scores(self) -> dict[str, float]: ...
    @property
    def thresholds(self) -> dict[str, float]: ...
    @property
    def fired(self) -> tuple[str, ...]: ...


@dataclass(frozen=True, slots=True)
class EvaluationReport:
    """Per-category metrics on a labelled folder, plus how often `safe` images fired anything."""

    data_dir: str
    images: int
    model: str
    method: str
    calibrated: bool
    categories: dict[str, BinaryMetrics]
    safe_images: int
    safe_fired: int  # safe images for which at least one category fired
    not_scored: tuple[str, ...]  # folder labels the classifier has no category for

    def to_dict(self) -> dict[str, Any]:
        return {
            "data_dir": self.data_dir,
            "images": self.images,
            "model": self.model,
            "method": self.method,
            "calibrated": self.calibrated,
            **({} if self.calibrated else {"uncalibrated": True}),
            "categories": {name: metrics.to_dict() for name, metrics in self.categories.items()},
            "safe_images": self.safe_images,
            "safe_fired": self.safe_fired,
            "not_scored": list(self.not_scored),
        }


def evaluate_verdicts(
    labels: Sequence[str],
    verdicts: Sequence[VerdictLike],
    categories: Sequence[str],
    *,
    data_dir: str = "",
    model: str = "",
    method: str = "",
    calibrated: bool = False,
) -> EvaluationReport:
    """Metrics per category: positives are that category's images, the ranking score is the margin."""
    results: dict[str, BinaryMetrics] = {}
    for category in categories:
        truth = [label == category for label in labels]
        predicted = [category in verdict.fired for verdict in verdicts]
        margins = [verdict.scores[category] - verdict.thresholds[category] for verdict in verdicts]
        results[category] = binary_metrics(truth, predicted, margins)
    safe = [verdict for label, verdict in zip(labels, verdicts, strict=True) if label == SAFE_LABEL]
    return EvaluationReport(
        data_dir=data_dir,
        images=len(labels),
        model=model,
        method=method,
        calibrated=calibrated,
        categories=results,
        safe_images=len(safe),
        safe_fired=sum(1 for verdict in safe if verdict.fired),
        not_scored=tuple(sorted(set(labels) - set(categories) - {SAFE_LABEL})),
    )
