from __future__ import annotations

from pathlib import Path

import pytest
import torch

from classifiers.concepts import (
    Concept,
    ConceptScorer,
    ConceptSet,
    apply_overrides,
    load_concept_set,
)
from classifiers.errors import ClassifierError
from classifiers.settings import ConceptOverrides, ConceptSpec

CATEGORIES = {"sexual", "minors", "violence", "self_harm", "hate", "weapons", "drugs"}


def unit(*values: float) -> torch.Tensor:
    vector = torch.tensor(values, dtype=torch.float32)
    return vector / vector.norm()


def small_scorer(adjustment: float = 0.05) -> ConceptScorer:
    """Axis-aligned concept embeddings: 0=sexual, 1=violence a, 4=violence b, 2=minors, 3=a child."""
    concept_set = ConceptSet(
        categories={
            "sexual": (Concept("sexual", 0.5),),
            "violence": (Concept("violence a", 0.9), Concept("violence b", 0.5)),
            "minors": (Concept("minors", 0.9),),
        },
        special_care=(Concept("a child", 0.5),),
        special_care_adjustment=adjustment,
        special_care_escalations={"sexual": "minors"},
    )
    embeddings = torch.stack([unit(1, 0, 0, 0, 0), unit(0, 1, 0, 0, 0), unit(0, 0, 0, 0, 1), unit(0, 0, 1, 0, 0), unit(0, 0, 0, 1, 0)])
    return ConceptScorer(concept_set, embeddings)


def test_default_concept_set_covers_every_category_and_is_not_calibrated() -> None:
    concept_set = load_concept_set()
    assert set(concept_set.categories) == CATEGORIES
    assert concept_set.special_care and concept_set.special_care_escalations == {"sexual": "minors"}
    assert concept_set.calibrated_for == ()
    for concepts in concept_set.categories.values():
        assert all(0 < concept.threshold < 1 for concept in concepts)


def test_score_is_best_concept_and_fires_over_threshold() -> None:
    scorer = small_scorer()
    image = unit(0.2, 0, 0, 0, 1).unsqueeze(0)  # close to "violence b" (dim 4), far from "violence a"
    result = scorer.score(image)[0]
    assert result.concepts["violence"] == "violence b"
    assert result.scores["violence"] == pytest.approx(float(unit(0.2, 0, 0, 0, 1)[4]), abs=1e-4)
    assert result.thresholds["violence"] == 0.5
    assert result.scores["violence"] > result.thresholds["violence"]
    assert result.scores["sexual"] < result.thresholds["sexual"]
    assert not result.special_care


def test_special_care_makes_thresholds_stricter_and_escalates_to_minors() -> None:
    scorer = small_scorer(adjustment=0.05)
    # cosine to "sexual" is 0.48: below 0.5 alone, above 0.45 when a child is present.
    sexual = 0.48
    rest = (1 - sexual**2) ** 0.5
    without_child = torch.tensor([[sexual, rest, 0.0, 0.0, 0.0]])  # rest on "violence a" (threshold 0.9)
    with_child = torch.tensor([[sexual, 0.0, 0.0, rest, 0.0]])  # rest on "a child"
    plain = scorer.score(without_child)[0]
    assert not plain.special_care and plain.scores["sexual"] <= plain.thresholds["sexual"]
    careful = scorer.score(with_child)[0]
    assert careful.special_care
    assert careful.thresholds["sexual"] == pytest.approx(0.45)
    assert careful.scores["sexual"] > careful.thresholds["sexual"]
    assert careful.scores["minors"] > careful.thresholds["minors"]  # escalated
    assert "special care" in careful.concepts["minors"]


def test_overrides_replace_offset_disable_and_calibrate(tmp_path: Path) -> None:
    base = load_concept_set()
    overrides = ConceptOverrides(
        categories={"weapons": [ConceptSpec(text="a crossbow", threshold=0.3)], "gambling": [ConceptSpec(text="a casino", threshold=0.28)]},
        disabled_categories=["drugs"],
        threshold_offsets={"violence": -0.02},
        special_care_adjustment=0.03,
        calibrated_for=["ViT-B-32/laion2b_s34b_b79k"],
    )
    changed = apply_overrides(base, overrides)
    assert changed.categories["weapons"] == (Concept("a crossbow", 0.3),)
    assert "gambling" in changed.categories and "drugs" not in changed.categories
    assert [c.threshold for c in changed.categories["violence"]] == pytest.approx(
        [c.threshold - 0.02 for c in base.categories["violence"]]
    )
    assert changed.special_care_adjustment == 0.03
    assert changed.calibrated_for == ("ViT-B-32/laion2b_s34b_b79k",)
    replacement = tmp_path / "concepts.yaml"
    replacement.write_text("categories:\n  hate:\n    - {text: a burning cross, threshold: 0.3}\n")
    only_hate = apply_overrides(base, ConceptOverrides(file=replacement))
    assert list(only_hate.categories) == ["hate"] and only_hate.special_care == ()


def test_bad_concepts_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("categories:\n  hate:\n    - {text: x, threshold: 7}\n")
    with pytest.raises(ClassifierError, match="cannot read concepts file"):
        load_concept_set(bad)


def test_text_embeddings_are_computed_once_at_load(tiny_classifier) -> None:
    scorer = tiny_classifier.concept_scorer
    embeddings_before = scorer._embeddings
    from .conftest import colour_image, encode

    tiny_classifier.classify_batch([encode(colour_image("safe", 5))])
    assert scorer._embeddings is embeddings_before
    concept_count = sum(len(c) for c in scorer.concept_set.categories.values()) + len(scorer.concept_set.special_care)
    assert embeddings_before.shape == (concept_count, 32)
