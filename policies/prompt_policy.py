"""The tenant-facing settings of the prompt filter (the `prompt` section of a policy file).

`PromptPolicy()` with no arguments is the production default: every category blocked except
illegal drugs (flagged for review), the paraphrase layer off. Sexual content involving minors is
always blocked: validation rejects any other setting, and no allow term can lift it.

What this module must never do: load lexicons, look at prompts, or do I/O. It is plain data with
validation; `PromptFilter` reads it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from policies.decisions import Action
from policies.prompt_lexicon import CATEGORIES

__all__ = ["CategoryAction", "ParaphraseSettings", "PromptPolicy", "DEFAULT_PARAPHRASE_THRESHOLD"]

CategoryAction = Literal["block", "flag", "allow"]

#: Paraphrase score (the trained head's probability that the prompt is not safe: the classifier
#: fine-tuned with the all-MiniLM-L6-v2 encoder's LoRA adapter; see policies/paraphrase.py) at or
#: above which the paraphrase layer reports a category.
#: Calibrated with `imagegate prompts report --calibrate`: of the 1,326 harmless prompts of tests/data
#: (every split but the unseen ones) that the lexical layers allow, at most 1% score over it
#: (the highest: 0.987). Retraining (`imagegate prompts train-head`) calls for recalibrating it.
DEFAULT_PARAPHRASE_THRESHOLD = 0.88


class ParaphraseSettings(BaseModel):
    """The optional embedding-similarity layer for euphemisms no lexicon lists."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    threshold: float = Field(DEFAULT_PARAPHRASE_THRESHOLD, gt=0.0, le=1.0)
    #: What a paraphrase match does: "flag" (default: fuzzy evidence goes to human review) or
    #: "category" (the category's own action, as for a lexicon hit).
    action: Literal["flag", "category"] = "flag"
    #: Only prompts the lexical layers allowed are embedded (the expensive path stays rare).
    only_when_lexical_allows: bool = True


class PromptPolicy(BaseModel):
    """Per-category actions, tenant terms and layer settings for prompt screening."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sexual: CategoryAction = "block"
    sexual_minors: CategoryAction = "block"
    violence: CategoryAction = "block"
    self_harm: CategoryAction = "block"
    hate: CategoryAction = "block"
    weapons: CategoryAction = "block"
    drugs: CategoryAction = "flag"
    public_figures: CategoryAction = "block"

    #: Words or phrases this tenant considers harmless (a brand name, a product): a lexicon hit
    #: inside one is ignored. Never applies to sexual content involving minors.
    allow_terms: tuple[str, ...] = ()
    #: Additional strong terms per category (for instance a competitor's trademark under
    #: "public_figures", or a local slur under "hate").
    extra_terms: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    #: Text fields screened as negative prompts: their unsafe words steer away from unsafe
    #: content, so they do not count as requests for it; the rules that catch negative-prompt
    #: evasions (clothing or "adult" in the negative prompt) apply to them instead.
    negative_fields: tuple[str, ...] = ("negative_prompt", "negative")
    #: Strict mode: screen negative prompts like any other field.
    screen_negative_as_positive: bool = False
    #: How many words before a term a negation cue ("no", "without", "anti") still applies.
    negation_window: int = Field(3, ge=0, le=8)
    #: Read a token that is no word of any language but one edit from a word of the shipped
    #: lexicons as that word ("fertlizer", "cocain"); real words one edit away ("heron", "kilted")
    #: never are. Off: only exact, obfuscated and listed forms match.
    misspellings: bool = True
    paraphrase: ParaphraseSettings = Field(default_factory=ParaphraseSettings)

    @field_validator("sexual_minors")
    @classmethod
    def _minors_always_blocked(cls, value: str) -> str:
        if value != "block":
            raise ValueError("sexual_minors is always blocked; no policy may flag or allow it")
        return value

    @field_validator("extra_terms")
    @classmethod
    def _known_categories(cls, value: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        unknown = sorted(set(value) - set(CATEGORIES))
        if unknown:
            raise ValueError(f"extra_terms: unknown categories {unknown}; known: {list(CATEGORIES)}")
        return value

    def action_for(self, category: str) -> Action:
        """The configured action for a category, as the shared `Action` enum."""
        return Action(getattr(self, category))
