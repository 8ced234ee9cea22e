"""`ImageClassifier`: decode, preprocess, embed and score images into `ImageVerdict`s (blocking, CPU).

The facade over the loader, the concept scorer and the trained heads. `load_classifier(settings)`
builds one per process (the proxy calls it in a thread at startup). The batching runner calls it in
two phases: `prepare_outcome` (decode and preprocess) as each image arrives, on a thread of its own,
and `classify_prepared` (embed and score) on whole batches in its worker thread; `classify_outcomes`
and `classify_batch` do both at once. Categories a trained head covers are scored by the head;
the rest by the concepts (unless `concepts_for_uncovered` is off).

Must never: run on the event loop, return a verdict without the model's identity and calibration
status, or let one undecodable image fail the other images of a batch (`classify_outcomes`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

from classifiers.concepts import (
    ConceptScorer,
    apply_overrides,
    escalate,
    load_concept_set,
)
from classifiers.decode import decode_image
from classifiers.errors import ClassifierError, ImageDecodeError
from classifiers.heads import HeadSet, load_head_set
from classifiers.loader import LoadedModel, ModelIdentity, encode_images, encode_pixels, load_model
from classifiers.settings import ClassifierSettings
from classifiers.verdict import ImageVerdict, decide


class ImageClassifier:
    """A loaded model plus its scorers; thread-safe for inference."""

    def __init__(
        self,
        loaded: LoadedModel,
        settings: ClassifierSettings,
        concept_scorer: ConceptScorer | None,
        heads: HeadSet | None,
    ) -> None:
        if concept_scorer is None and heads is None:
            raise ClassifierError("a classifier needs concepts, a trained head, or both")
        self.loaded = loaded
        self.settings = settings
        self.concept_scorer = concept_scorer
        self.heads = heads
        head_categories = set(heads.categories) if heads else set()
        self._concept_categories = [
            name for name in (concept_scorer.categories if concept_scorer else []) if name not in head_categories
        ]
        if heads and self._concept_categories:
            self.method = "head+concepts"
        elif heads:
            self.method = "head"
        else:
            self.method = "concepts"
        self.uncalibrated_reasons = self._calibration_gaps()

    # -- identity -----------------------------------------------------------------------------
    @property
    def identity(self) -> ModelIdentity:
        return self.loaded.identity

    @property
    def model_label(self) -> str:
        return self.loaded.identity.label

    @property
    def calibrated(self) -> bool:
        return not self.uncalibrated_reasons

    @property
    def categories(self) -> list[str]:
        return [*(self.heads.categories if self.heads else []), *self._concept_categories]

    def _calibration_gaps(self) -> tuple[str, ...]:
        gaps: list[str] = []
        if self.loaded.identity.checkpoint_sha256 is None:
            gaps.append("random weights")
        elif not self.loaded.trained_weights:
            gaps.append("checkpoint not declared trained (set checkpoint_trained)")
        if self._concept_categories and self.concept_scorer is not None:
            if not self.concept_scorer.concept_set.is_calibrated_for(self.loaded.identity):
                gaps.append(f"concept thresholds not calibrated for {self.model_label}")
        return tuple(gaps)

    # -- pipeline -----------------------------------------------------------------------------
    def decode(self, data: bytes) -> Image.Image:
        return decode_image(data, self.settings.decode)

    def embed_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """L2-normalised image embeddings (N x D, float32, CPU), in chunks of `batch_size`."""
        return encode_images(self.loaded, images, self.settings.batch_size)

    def score_embeddings(self, embeddings: torch.Tensor) -> list[ImageVerdict]:
        count = embeddings.shape[0]
        concept_results = self.concept_scorer.score(embeddings) if self.concept_scorer else [None] * count
        head_probs = self.heads.probabilities(embeddings) if self.heads else {}
        verdicts: list[ImageVerdict] = []
        for row in range(count):
            scores: dict[str, float] = {}
            thresholds: dict[str, float] = {}
            chosen: dict[str, str] = {}
            special_care = False
            if self.heads:
                for name, head in self.heads.heads.items():
                    scores[name] = round(head_probs[name][row], 4)
                    thresholds[name] = self.settings.head_thresholds.get(name, head.threshold)
            result = concept_results[row]
            if result is not None:
                special_care = result.special_care
                for name in self._concept_categories:
                    scores[name] = result.scores[name]
                    thresholds[name] = result.thresholds[name]
                    chosen[name] = result.concepts[name]
                if special_care and self.heads:
                    escalate(scores, thresholds, chosen, self.concept_scorer.concept_set.special_care_escalations)  # type: ignore[union-attr]
            action, category, fired = decide(scores, thresholds, self.settings.action_for)
            verdicts.append(
                ImageVerdict(
                    action=action,
                    category=category,
                    scores=scores,
                    thresholds=thresholds,
                    method=self.method,
                    model=self.model_label,
                    checkpoint_sha256=self.identity.checkpoint_sha256,
                    calibrated=self.calibrated,
                    special_care=special_care,
                    fired=fired,
                    uncalibrated_reasons=self.uncalibrated_reasons,
                    concepts=chosen,
                )
            )
        return verdicts

    def classify_images(self, images: Sequence[Image.Image]) -> list[ImageVerdict]:
        """Verdicts for already-decoded RGB images."""
        return self.score_embeddings(self.embed_images(images))

    def prepare(self, data: bytes) -> torch.Tensor:
        """Decode and preprocess one image into the model's input (C x H x W); raises `ImageDecodeError`."""
        return self.loaded.preprocess(self.decode(data))

    def prepare_outcome(self, data: bytes) -> torch.Tensor | ImageDecodeError:
        """`prepare`, with an undecodable image's error returned instead of raised."""
        try:
            return self.prepare(data)
        except ImageDecodeError as error:
            return error

    def classify_prepared(
        self, prepared: Sequence[torch.Tensor | ImageDecodeError]
    ) -> list[ImageVerdict | ImageDecodeError]:
        """One verdict per prepared image, in order; a decode error stays in its place."""
        pixels = [item for item in prepared if not isinstance(item, ImageDecodeError)]
        if not pixels:
            return list(prepared)  # type: ignore[arg-type]
        verdicts = iter(self.score_embeddings(encode_pixels(self.loaded, pixels, self.settings.batch_size)))
        return [item if isinstance(item, ImageDecodeError) else next(verdicts) for item in prepared]

    def classify_outcomes(self, images: Sequence[bytes]) -> list[ImageVerdict | ImageDecodeError]:
        """One verdict per image, or the `ImageDecodeError` of an image that could not be decoded."""
        return self.classify_prepared([self.prepare_outcome(data) for data in images])

    def classify_batch(self, images: Sequence[bytes]) -> list[ImageVerdict]:
        """One verdict per image, in order; raises `ImageDecodeError` if any image cannot be decoded."""
        outcomes = self.classify_outcomes(images)
        for index, outcome in enumerate(outcomes):
            if isinstance(outcome, ImageDecodeError):
                raise ImageDecodeError(f"image {index}: {outcome}") from outcome
        return outcomes  # type: ignore[return-value]


def load_classifier(settings: ClassifierSettings) -> ImageClassifier:
    """Load the model, embed the concepts and load the head: blocking, call it in a thread."""
    if not settings.enabled:
        raise ClassifierError("the classifier is disabled in the settings")
    loaded = load_model(settings)
    heads = load_head_set(settings.head.expanduser(), loaded.identity) if settings.head else None
    scorer: ConceptScorer | None = None
    if heads is None or settings.concepts_for_uncovered:
        concept_set = apply_overrides(load_concept_set(), settings.concepts)
        if concept_set.categories:
            scorer = ConceptScorer.build(loaded, concept_set)
    return ImageClassifier(loaded, settings, scorer, heads)
