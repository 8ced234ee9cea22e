from __future__ import annotations

import pytest
from pydantic import ValidationError

from classifiers.settings import ClassifierSettings
from classifiers.verdict import ImageVerdict, decide
from policies.decisions import Action


def test_decide_takes_most_severe_action_then_largest_margin() -> None:
    settings = ClassifierSettings()
    scores = {"sexual": 0.40, "weapons": 0.90, "minors": 0.31, "drugs": 0.1}
    thresholds = {"sexual": 0.30, "weapons": 0.30, "minors": 0.30, "drugs": 0.3}
    action, category, fired = decide(scores, thresholds, settings.action_for)
    assert (action, category) == (Action.BLOCK, "minors")  # block beats blur beats flag
    assert set(fired) == {"sexual", "weapons", "minors"}
    assert decide({"drugs": 0.1}, {"drugs": 0.3}, settings.action_for) == (Action.ALLOW, None, ())


def test_actions_are_configurable_and_validated() -> None:
    settings = ClassifierSettings(actions={"weapons": "block", "gambling": "blur"})
    assert settings.action_for("weapons") is Action.BLOCK
    assert settings.action_for("gambling") is Action.BLUR
    assert settings.action_for("sexual") is Action.BLUR  # default kept
    assert settings.action_for("unknown") is Action.FLAG
    with pytest.raises(ValidationError):
        ClassifierSettings(actions={"weapons": "error"})


def test_uncalibrated_verdict_says_so_everywhere() -> None:
    verdict = ImageVerdict(
        action=Action.FLAG,
        category="drugs",
        scores={"drugs": 0.35},
        thresholds={"drugs": 0.3},
        method="concepts",
        model="tiny (checkpoint abc)",
        checkpoint_sha256="abc",
        calibrated=False,
        special_care=False,
        fired=("drugs",),
        uncalibrated_reasons=("random weights",),
    )
    data = verdict.to_dict()
    assert data["uncalibrated"] is True and data["uncalibrated_reasons"] == ["random weights"]
    assert data["action"] == "flag" and data["checkpoint_sha256"] == "abc"
    assert "UNCALIBRATED" in verdict.summary() and "flag drugs 0.350>0.300" in verdict.summary()
