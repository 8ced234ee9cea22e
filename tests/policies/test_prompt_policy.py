"""PromptPolicy: defaults and validation (sexual content with minors is always blocked)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from policies.decisions import Action
from policies.prompt_policy import DEFAULT_PARAPHRASE_THRESHOLD, PromptPolicy


def test_defaults_are_a_production_policy() -> None:
    policy = PromptPolicy()
    assert policy.action_for("sexual_minors") is Action.BLOCK
    assert policy.action_for("sexual") is Action.BLOCK
    assert policy.action_for("drugs") is Action.FLAG
    assert policy.paraphrase.enabled is False
    assert policy.paraphrase.threshold == DEFAULT_PARAPHRASE_THRESHOLD


@pytest.mark.parametrize("setting", ["flag", "allow"])
def test_minors_cannot_be_relaxed(setting: str) -> None:
    with pytest.raises(ValidationError, match="always blocked"):
        PromptPolicy(sexual_minors=setting)


def test_unknown_settings_and_categories_are_rejected() -> None:
    with pytest.raises(ValidationError):
        PromptPolicy(sexual="maybe")
    with pytest.raises(ValidationError):
        PromptPolicy(extra_terms={"gambling": ("poker",)})
    with pytest.raises(ValidationError):
        PromptPolicy.model_validate({"sexaul": "allow"})


def test_policy_loads_from_plain_data() -> None:
    policy = PromptPolicy.model_validate(
        {"violence": "flag", "allow_terms": ["Gore-Tex"], "paraphrase": {"enabled": True, "threshold": 0.6}}
    )
    assert policy.action_for("violence") is Action.FLAG
    assert policy.allow_terms == ("Gore-Tex",)
    assert policy.paraphrase.threshold == 0.6
