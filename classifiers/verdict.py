"""`ImageVerdict`: what the classifier decided about one image, and the rule that turns scores into it.

A verdict is plain, frozen data that travels into the audit record and the C2PA manifest: the action,
the worst category, every category's score and threshold, how it was scored, by which model
(name and checkpoint SHA-256) and whether that model is calibrated. A verdict from an uncalibrated
model says `uncalibrated` in `to_dict()` and `summary()`, always.

Must never: import torch, or drop the calibration marking from any rendering of a verdict.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from policies.decisions import SEVERITY, Action


@dataclass(frozen=True, slots=True)
class ImageVerdict:
    action: Action
    category: str | None  # the worst fired category (highest action severity, then largest margin)
    scores: dict[str, float]
    thresholds: dict[str, float]  # a category fires when score > threshold
    method: str  # "concepts", "head", or "head+concepts" (head categories plus concept-scored rest)
    model: str  # "ViT-B-32/laion2b_s34b_b79k", "ViT-B-32 (checkpoint 1a2b...)"
    checkpoint_sha256: str | None
    calibrated: bool
    special_care: bool  # a special-care concept (a child is present) fired; thresholds were stricter
    fired: tuple[str, ...] = ()
    uncalibrated_reasons: tuple[str, ...] = ()
    concepts: dict[str, str] = field(default_factory=dict)  # category -> best-matching concept text

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "action": self.action.value,
            "category": self.category,
            "fired": list(self.fired),
            "scores": dict(self.scores),
            "thresholds": dict(self.thresholds),
            "method": self.method,
            "model": self.model,
            "checkpoint_sha256": self.checkpoint_sha256,
            "calibrated": self.calibrated,
            "special_care": self.special_care,
        }
        if self.concepts:
            data["concepts"] = dict(self.concepts)
        if not self.calibrated:
            data["uncalibrated"] = True
            data["uncalibrated_reasons"] = list(self.uncalibrated_reasons)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImageVerdict:
        """The inverse of `to_dict` (a verdict that travelled over the wire from a classifier service).

        A verdict that says `uncalibrated` stays uncalibrated; malformed data raises ValueError.
        """
        try:
            scores = {str(k): float(v) for k, v in data["scores"].items()}
            thresholds = {str(k): float(v) for k, v in data["thresholds"].items()}
            calibrated = data["calibrated"] is True and not data.get("uncalibrated", False)
            category = data["category"]
            if category is not None and (category not in scores or category not in thresholds):
                raise ValueError(f"category {category!r} has no score and threshold")
            return cls(
                action=Action(data["action"]),
                category=category,
                scores=scores,
                thresholds=thresholds,
                method=str(data["method"]),
                model=str(data["model"]),
                checkpoint_sha256=data.get("checkpoint_sha256"),
                calibrated=calibrated,
                special_care=bool(data.get("special_care", False)),
                fired=tuple(str(name) for name in data.get("fired", ())),
                uncalibrated_reasons=tuple(str(r) for r in data.get("uncalibrated_reasons", ()))
                or (() if calibrated else ("the classifier service reported the model as uncalibrated",)),
                concepts={str(k): str(v) for k, v in (data.get("concepts") or {}).items()},
            )
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise ValueError(f"not a verdict: {type(exc).__name__}: {exc}") from None

    def summary(self) -> str:
        """One line for logs and the CLI, e.g. `blur sexual 0.312>0.270 | ViT-B-32/... | concepts`."""
        if self.category is not None:
            head = (
                f"{self.action.value} {self.category} "
                f"{self.scores[self.category]:.3f}>{self.thresholds[self.category]:.3f}"
            )
        else:
            top = max(self.scores, key=lambda name: self.scores[name] - self.thresholds[name], default=None)
            head = f"{self.action.value}" + (
                f" (closest: {top} {self.scores[top]:.3f}<={self.thresholds[top]:.3f})" if top else ""
            )
        parts = [head, self.model, self.method]
        if self.special_care:
            parts.append("special-care")
        if not self.calibrated:
            parts.append("UNCALIBRATED")
        return " | ".join(parts)


def decide(
    scores: dict[str, float],
    thresholds: dict[str, float],
    action_for: Callable[[str], Action],
) -> tuple[Action, str | None, tuple[str, ...]]:
    """(action, worst category, fired categories) for one image's scores."""
    fired = tuple(name for name in scores if scores[name] > thresholds[name])
    if not fired:
        return Action.ALLOW, None, ()
    worst = max(fired, key=lambda name: (SEVERITY[action_for(name)], scores[name] - thresholds[name]))
    return action_for(worst), worst, fired
