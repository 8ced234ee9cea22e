"""The vocabulary every stage uses to say what it decided, and why.

A `Decision` is plain data: which stage decided, what it did, for which category, with which score
and a short human reason. Stages append decisions to the exchange; the audit record and the C2PA
manifest carry them verbatim. Keep this module free of behaviour so every package can import it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class Action(str, Enum):
    """What a stage did. Ordered by severity in `SEVERITY` (higher wins when combining)."""

    ALLOW = "allow"
    SKIPPED = "skipped"  # the stage is not configured or not built yet; never a verdict
    FLAG = "flag"  # let through, queued for human review
    BLUR = "blur"  # image replaced by a heavily blurred copy, marked as such
    BLOCK = "block"
    ERROR = "error"  # the stage failed; the failure policy decides what happens next


SEVERITY: dict[Action, int] = {
    Action.SKIPPED: 0,
    Action.ALLOW: 1,
    Action.FLAG: 2,
    Action.BLUR: 3,
    Action.ERROR: 4,
    Action.BLOCK: 5,
}


def most_severe(actions: list[Action]) -> Action:
    """The action that wins when several apply (block beats blur beats flag beats allow)."""
    return max(actions, key=SEVERITY.__getitem__, default=Action.ALLOW)


@dataclass(frozen=True, slots=True)
class Decision:
    """One stage's decision on one request (or on one image of it, with `image_index`)."""

    stage: str
    action: Action
    category: str | None = None
    score: float | None = None
    reason: str = ""
    image_index: int | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for audit records and manifests; empty fields are left out."""
        data: dict[str, Any] = {"stage": self.stage, "action": self.action.value}
        if self.category is not None:
            data["category"] = self.category
        if self.score is not None:
            data["score"] = self.score
        if self.reason:
            data["reason"] = self.reason
        if self.image_index is not None:
            data["image_index"] = self.image_index
        if self.details:
            data["details"] = dict(self.details)
        return data
