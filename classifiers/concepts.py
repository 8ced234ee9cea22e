"""Zero-shot concept scoring, in the manner of the Stable Diffusion safety checker.

Each category (sexual, minors, violence, ...) has text concepts with a cosine threshold. An image's
score for a category is its cosine similarity to the concept with the largest margin over its
threshold; the category fires when score > threshold. A "special care" concept (a child is present)
makes every threshold stricter by `special_care_adjustment` and escalates configured categories
(sexual content with a child present also fires `minors`). Text embeddings are computed once, when
the scorer is built.

Must never: recompute text embeddings per image, invent thresholds (they come from the YAML and the
policy overrides), or claim calibration for a model not listed in `calibrated_for`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from classifiers.errors import ClassifierError
from classifiers.loader import LoadedModel, ModelIdentity
from classifiers.settings import ConceptOverrides, ConceptSpec


@dataclass(frozen=True, slots=True)
class Concept:
    text: str
    threshold: float


@dataclass(frozen=True, slots=True)
class ConceptSet:
    """The concept texts and thresholds in force, per category."""

    categories: dict[str, tuple[Concept, ...]]
    special_care: tuple[Concept, ...] = ()
    special_care_adjustment: float = 0.01
    special_care_escalations: dict[str, str] = field(default_factory=dict)
    calibrated_for: tuple[str, ...] = ()

    def is_calibrated_for(self, identity: ModelIdentity) -> bool:
        """Listed as "architecture/pretrained-tag" or as "sha256:<checkpoint hash>"."""
        names = {f"sha256:{identity.checkpoint_sha256}"} if identity.checkpoint_sha256 else set()
        if identity.pretrained and identity.checkpoint_sha256:
            names.add(f"{identity.architecture}/{identity.pretrained}")
        return bool(names & set(self.calibrated_for))


class _ConceptFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = 1
    calibrated_for: list[str] = Field(default_factory=list)
    special_care_adjustment: float = Field(default=0.01, ge=0.0, le=0.5)
    special_care: list[ConceptSpec] = Field(default_factory=list)
    special_care_escalations: dict[str, str] = Field(default_factory=dict)
    categories: dict[str, list[ConceptSpec]]


def _concepts(specs: list[ConceptSpec]) -> tuple[Concept, ...]:
    return tuple(Concept(spec.text, spec.threshold) for spec in specs)


def load_concept_set(path: Path | None = None) -> ConceptSet:
    """Read a concepts YAML; the packaged default (`classifiers/data/concepts.yaml`) when `path` is None."""
    try:
        if path is None:
            text = resources.files("classifiers").joinpath("data/concepts.yaml").read_text(encoding="utf-8")
        else:
            text = path.read_text(encoding="utf-8")
        parsed = _ConceptFile.model_validate(yaml.safe_load(text))
    except (OSError, yaml.YAMLError, ValidationError) as error:
        raise ClassifierError(f"cannot read concepts file {path or 'default'}: {error}") from error
    return ConceptSet(
        categories={name: _concepts(specs) for name, specs in parsed.categories.items() if specs},
        special_care=_concepts(parsed.special_care),
        special_care_adjustment=parsed.special_care_adjustment,
        special_care_escalations=dict(parsed.special_care_escalations),
        calibrated_for=tuple(parsed.calibrated_for),
    )


def apply_overrides(base: ConceptSet, overrides: ConceptOverrides) -> ConceptSet:
    """The concept set after the policy's changes (a replacement file, categories, offsets, ...)."""
    concept_set = load_concept_set(overrides.file) if overrides.file is not None else base
    categories = dict(concept_set.categories)
    for name, specs in overrides.categories.items():
        categories[name] = _concepts(specs)
    for name in overrides.disabled_categories:
        categories.pop(name, None)
    for name, offset in overrides.threshold_offsets.items():
        if name in categories:
            categories[name] = tuple(Concept(c.text, c.threshold + offset) for c in categories[name])
    categories = {name: concepts for name, concepts in categories.items() if concepts}
    changes: dict[str, Any] = {"categories": categories}
    if overrides.special_care is not None:
        changes["special_care"] = _concepts(overrides.special_care)
    if overrides.special_care_adjustment is not None:
        changes["special_care_adjustment"] = overrides.special_care_adjustment
    if overrides.calibrated_for is not None:
        changes["calibrated_for"] = tuple(overrides.calibrated_for)
    return replace(concept_set, **changes)


@dataclass(frozen=True, slots=True)
class ConceptScores:
    """One image's concept scores: per category the best concept's cosine and its threshold."""

    scores: dict[str, float]
    thresholds: dict[str, float]
    concepts: dict[str, str]  # category -> text of the concept with the largest margin
    special_care: bool


class ConceptScorer:
    """Scores normalised image embeddings against a concept set's precomputed text embeddings."""

    def __init__(self, concept_set: ConceptSet, text_embeddings: torch.Tensor) -> None:
        self.concept_set = concept_set
        self._category_names = list(concept_set.categories)
        self._slices: dict[str, slice] = {}
        thresholds: list[float] = []
        start = 0
        for name in self._category_names:
            concepts = concept_set.categories[name]
            self._slices[name] = slice(start, start + len(concepts))
            thresholds.extend(c.threshold for c in concepts)
            start += len(concepts)
        self._special = slice(start, start + len(concept_set.special_care))
        thresholds.extend(c.threshold for c in concept_set.special_care)
        if text_embeddings.shape[0] != len(thresholds):
            raise ValueError("one text embedding per concept expected")
        self._texts = [c.text for name in self._category_names for c in concept_set.categories[name]]
        self._embeddings = text_embeddings
        self._thresholds = torch.tensor(thresholds, dtype=text_embeddings.dtype, device=text_embeddings.device)

    @property
    def categories(self) -> list[str]:
        return list(self._category_names)

    @classmethod
    def build(cls, loaded: LoadedModel, concept_set: ConceptSet) -> ConceptScorer:
        """Embed every concept text once with the model's text tower."""
        texts = [c.text for concepts in concept_set.categories.values() for c in concepts]
        texts += [c.text for c in concept_set.special_care]
        if not texts:
            raise ClassifierError("the concept set is empty")
        with torch.inference_mode():
            tokens = loaded.tokenizer(texts).to(loaded.device)
            embeddings = loaded.model.encode_text(tokens, normalize=True).float()  # type: ignore[operator]
        return cls(concept_set, embeddings)

    def score(self, image_embeddings: torch.Tensor) -> list[ConceptScores]:
        """Scores for a batch of L2-normalised image embeddings (shape N x D)."""
        similarities = image_embeddings.float() @ self._embeddings.T  # N x concepts
        margins = similarities - self._thresholds
        special = margins[:, self._special]
        special_fired = (special > 0).any(dim=1) if special.shape[1] else torch.zeros(
            similarities.shape[0], dtype=torch.bool
        )
        adjustment = self.concept_set.special_care_adjustment
        results: list[ConceptScores] = []
        sims = similarities.cpu().tolist()
        marg = margins.cpu().tolist()
        thresholds = self._thresholds.cpu().tolist()
        for row, special_care in enumerate(special_fired.cpu().tolist()):
            shift = adjustment if special_care else 0.0
            scores: dict[str, float] = {}
            limits: dict[str, float] = {}
            chosen: dict[str, str] = {}
            for name in self._category_names:
                part = self._slices[name]
                indices = range(part.start, part.stop)
                best = max(indices, key=lambda index: marg[row][index])
                scores[name] = round(sims[row][best], 4)
                limits[name] = round(thresholds[best] - shift, 4)
                chosen[name] = self._texts[best]
            if special_care:
                escalate(scores, limits, chosen, self.concept_set.special_care_escalations)
            results.append(ConceptScores(scores, limits, chosen, bool(special_care)))
        return results


def escalate(
    scores: dict[str, float], thresholds: dict[str, float], chosen: dict[str, str], escalations: dict[str, str]
) -> None:
    """With special care in force, a fired source category also fires its target (in place)."""
    for source, target in escalations.items():
        if source in scores and scores[source] > thresholds[source]:
            source_margin = scores[source] - thresholds[source]
            target_margin = scores[target] - thresholds[target] if target in scores else float("-inf")
            if source_margin > target_margin:
                scores[target] = scores[source]
                thresholds[target] = thresholds[source]
                chosen[target] = f"{chosen.get(source, source)} (special care)"
