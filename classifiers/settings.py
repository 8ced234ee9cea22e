"""The classifier's configuration: which model, where its weights come from, what each category does.

One pydantic model, `ClassifierSettings`, read from the `classifier:` section of the imagegate config
(the proxy's loader applies `IMAGEGATE_...` overrides). Concept texts and thresholds themselves live
in a concepts YAML (the default is `classifiers/data/concepts.yaml`), changed here per deployment.

Must never: load a model, touch the network or import torch; it only describes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from classifiers.decode import DecodeLimits
from policies.decisions import Action

#: Actions a category may be configured to take.
CATEGORY_ACTIONS = (Action.ALLOW, Action.FLAG, Action.BLUR, Action.BLOCK)

DEFAULT_CATEGORY_ACTIONS: dict[str, Action] = {
    "sexual": Action.BLUR,
    "minors": Action.BLOCK,
    "violence": Action.BLUR,
    "self_harm": Action.BLOCK,
    "hate": Action.BLOCK,
    "weapons": Action.FLAG,
    "drugs": Action.FLAG,
}


class ConceptSpec(BaseModel):
    """One text concept: the image fires it when cosine(image, text) exceeds `threshold`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    text: str = Field(min_length=1, max_length=300)
    threshold: float = Field(ge=-1.0, le=1.0)


class ConceptOverrides(BaseModel):
    """Per-deployment changes to the concept set (the policy file's word on zero-shot scoring)."""

    model_config = ConfigDict(extra="forbid")

    file: Path | None = None  # a concepts YAML replacing the default one entirely
    categories: dict[str, list[ConceptSpec]] = Field(default_factory=dict)  # replace/add categories
    disabled_categories: list[str] = Field(default_factory=list)
    threshold_offsets: dict[str, float] = Field(default_factory=dict)  # negative = stricter
    special_care: list[ConceptSpec] | None = None
    special_care_adjustment: float | None = Field(default=None, ge=0.0, le=0.5)
    # Model identities ("ViT-B-32/laion2b_s34b_b79k") the thresholds were measured on.
    calibrated_for: list[str] | None = None


class ClassifierSettings(BaseModel):
    """Everything `load_classifier` needs; defaults give ViT-B-32 / laion2b_s34b_b79k on CPU."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    model: str = "ViT-B-32"  # an open_clip architecture name
    pretrained: str | None = "laion2b_s34b_b79k"  # an open_clip pretrained tag
    # A local checkpoint file (weights for `model`) or folder (open_clip_config.json + weights);
    # takes precedence over `pretrained`, which then only chooses preprocessing and QuickGELU.
    checkpoint: Path | None = None
    # Only a declared-trained checkpoint counts as calibrated; an unknown file might be anything.
    checkpoint_trained: bool = False
    force_quick_gelu: bool | None = None  # None: as the pretrained tag / folder config says
    cache_dir: Path | None = None  # open_clip / Hugging Face download cache
    offline: bool = False  # like HF_HUB_OFFLINE=1: only cached weights are used
    # Random weights cost the same as real ones: for benchmarks only, and always `uncalibrated`.
    allow_random_weights: bool = False
    head: Path | None = None  # a trained head file (`imagegate classifier train-head`)
    # With a head: categories the head does not cover are still scored by the concepts.
    concepts_for_uncovered: bool = True
    head_thresholds: dict[str, float] = Field(default_factory=dict)  # probability thresholds
    device: str = "cpu"
    torch_threads: int | None = Field(default=None, ge=1, le=256)
    batch_size: int = Field(default=16, ge=1, le=512)
    max_batch_wait_ms: float = Field(default=10.0, ge=0.0, le=5000.0)
    # Threads that decode and preprocess images ahead of the model (Pillow releases the GIL). One
    # suits a CPU model, which needs the cores itself; on a GPU, decoding is the bottleneck: raise it.
    decode_threads: int = Field(default=1, ge=1, le=64)
    actions: dict[str, Action] = Field(default_factory=lambda: dict(DEFAULT_CATEGORY_ACTIONS))
    default_action: Action = Action.FLAG  # for a category with no entry in `actions`
    concepts: ConceptOverrides = Field(default_factory=ConceptOverrides)
    decode: DecodeLimits = Field(default_factory=DecodeLimits)
    failure_mode: Literal["closed", "open"] = "closed"  # read by the proxy stage, not here

    @field_validator("actions")
    @classmethod
    def _known_actions(cls, value: dict[str, Action]) -> dict[str, Action]:
        for category, action in value.items():
            if action not in CATEGORY_ACTIONS:
                raise ValueError(f"category {category!r}: action must be allow, flag, blur or block")
        merged = dict(DEFAULT_CATEGORY_ACTIONS)
        merged.update(value)
        return merged

    @field_validator("default_action")
    @classmethod
    def _known_default(cls, value: Action) -> Action:
        if value not in CATEGORY_ACTIONS:
            raise ValueError("default_action must be allow, flag, blur or block")
        return value

    @field_validator("head_thresholds")
    @classmethod
    def _probabilities(cls, value: dict[str, float]) -> dict[str, float]:
        for category, threshold in value.items():
            if not 0.0 < threshold < 1.0:
                raise ValueError(f"head threshold for {category!r} must lie strictly between 0 and 1")
        return value

    @model_validator(mode="after")
    def _some_weights(self) -> ClassifierSettings:
        if self.enabled and self.checkpoint is None and self.pretrained is None and not self.allow_random_weights:
            raise ValueError(
                "no weights configured: set `pretrained` or `checkpoint` "
                "(random weights only with `allow_random_weights`, for benchmarks)"
            )
        return self

    def action_for(self, category: str) -> Action:
        return self.actions.get(category, self.default_action)
