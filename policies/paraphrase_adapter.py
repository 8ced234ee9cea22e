"""A LoRA adapter for the paraphrase layer's encoder: all-MiniLM-L6-v2 fine-tuned on imagegate's
own training prompts, shipped as low-rank factors (policies/data/paraphrase_adapter.npz).

Why. The head (`policies.paraphrase`) is a linear model over a frozen encoder: it can only weigh
what MiniLM's general-purpose embedding already separates, and euphemisms sit close to their
harmless twins there ("in her birthday suit" / "on her birthday"). Fine-tuning moves them apart.
Shipping a whole fine-tuned model (90 MB) is out of the question; a rank-8 update of every linear
layer of the 6 transformer blocks is 335,000 numbers (670 KB as float16), and merged into the
weights at load time it costs nothing per prompt.

Training (`imagegate prompts train-head`, about 8 minutes on 2 CPU cores): the factors and a
linear classifier over the normalised mean-pooled embedding are trained together with weighted
cross-entropy (safe examples weigh `safe_share` of the total, as for the frozen-encoder head) on
the training examples, the evaluation prompts' near copies left out. The classifier then is the
paraphrase layer's head (`ParaphraseAdapter.head`: its weights on the sentence-embedding columns
of the head's features, zero elsewhere). Fitting the frozen-encoder head (`fit_head`) on the
adapted encoder's features instead did worse on the dev splits, because those features are
fitted to the very examples the head would learn from. Seeded and single-process: the same
files, settings and torch build give the same factors. The adapter records the files it was
trained on; the head's fingerprint names the adapter (`adapted_model_name`), so a head and an
adapter that were not trained together are refused.

What this module must never do: reach the network, change a model except through `apply` (which
the caller asks for), or keep a training wrapper in a model after `fine_tune` returns.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from policies.paraphrase import ADAPTER_PATH, SAFE_SHARE, Example, ParaphraseHead, class_weights

__all__ = ["ADAPTER_PATH", "TARGETS", "AdapterSettings", "ParaphraseAdapter", "fine_tune"]

FORMAT = "imagegate-paraphrase-adapter/1"
#: The linear layers of each transformer block (BERT module paths) that get a low-rank update.
#: The classifier reads the normalised sentence embedding times this (cosines are small numbers).
LOGIT_SCALE = 10.0
TARGETS = ("attention.self.query", "attention.self.key", "attention.self.value",
           "attention.output.dense", "intermediate.dense", "output.dense")


@dataclass(frozen=True)
class AdapterSettings:
    """Chosen on the dev splits of tests/data (fresh_dev_1, fresh_dev_2) against the frozen
    encoder: rank 8 on the query and value layers alone did worse than no adapter; rank 8 on
    every linear layer, 4 epochs, did better (see the README)."""

    rank: int = 8
    alpha: float = 16.0
    epochs: int = 4
    learning_rate: float = 2e-3
    batch_size: int = 32
    max_length: int = 64
    safe_share: float = SAFE_SHARE
    seed: int = 0

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


@dataclass(frozen=True)
class ParaphraseAdapter:
    """Per block and target (block-major, `TARGETS` order): A (rank x in) and B (out x rank);
    `apply` adds scale * B @ A to each weight."""

    factors: tuple[tuple[Any, Any], ...]
    #: The classifier trained with the factors: classes, weight (classes x hidden), bias (classes),
    #: over `LOGIT_SCALE` times the normalised sentence embedding.
    classes: tuple[str, ...]
    weight: Any
    bias: Any
    settings: AdapterSettings
    base_model: str
    #: `policies.paraphrase.training_fingerprint` of the files it was trained on, with base_model.
    fingerprint: str
    files: tuple[str, ...]
    excluded: tuple[str, ...] = ()
    #: Mean weighted training loss per epoch.
    losses: tuple[float, ...] = ()
    digest: str = field(default="", compare=False)

    def _metadata(self) -> dict[str, Any]:
        return {"format": FORMAT, "base_model": self.base_model, "classes": list(self.classes),
                "settings": asdict(self.settings), "targets": list(TARGETS), "fingerprint": self.fingerprint, "files": list(self.files),
                "excluded": list(self.excluded), "losses": [round(value, 6) for value in self.losses],
                "retrain": "imagegate prompts train-head"}

    def to_bytes(self) -> bytes:
        """Deterministic: the same factors and metadata give the same bytes."""
        import numpy as np

        buffer = io.BytesIO()
        arrays = {"metadata": np.frombuffer(json.dumps(self._metadata(), sort_keys=True).encode(), dtype="uint8"),
                  "weight": np.asarray(self.weight, "float32"), "bias": np.asarray(self.bias, "float32")}
        for index, (a, b) in enumerate(self.factors):
            arrays[f"a{index}"], arrays[f"b{index}"] = np.asarray(a, "float16"), np.asarray(b, "float16")
        np.savez(buffer, **arrays)
        return buffer.getvalue()

    def save(self, path: Path = ADAPTER_PATH) -> ParaphraseAdapter:
        """Write the adapter; returns it as loaded back (float16 factors, digest set)."""
        path.write_bytes(self.to_bytes())
        return self.load(path)

    @classmethod
    def load(cls, path: Path = ADAPTER_PATH) -> ParaphraseAdapter:
        import numpy as np

        raw = path.read_bytes()
        with np.load(io.BytesIO(raw), allow_pickle=False) as data:
            metadata = json.loads(bytes(data["metadata"]).decode())
            if metadata.get("format") != FORMAT or tuple(metadata.get("targets", ())) != TARGETS:
                raise ValueError(f"{path}: not an {FORMAT} file for targets {TARGETS}")
            count = sum(1 for name in data.files if name[0] == "a" and name[1:].isdigit())
            factors = tuple((data[f"a{i}"].astype("float32"), data[f"b{i}"].astype("float32")) for i in range(count))
            weight, bias = data["weight"].astype("float32"), data["bias"].astype("float32")
        return cls(factors, tuple(metadata["classes"]), weight, bias, AdapterSettings(**metadata["settings"]),
                   metadata["base_model"], metadata["fingerprint"], tuple(metadata["files"]), tuple(metadata["excluded"]), tuple(metadata["losses"]),
                   hashlib.sha256(raw).hexdigest())

    def apply(self, model: Any) -> Any:
        """Merge the update into `model` (a transformers BERT encoder, e.g. MiniLM), in place."""
        import torch

        modules = _target_modules(model)
        if len(modules) != len(self.factors):
            raise ValueError(f"the adapter has {len(self.factors)} updates and the model {len(modules)} target layers")
        with torch.no_grad():
            for module, (a, b) in zip(modules, self.factors, strict=True):
                a, b = torch.as_tensor(a), torch.as_tensor(b)
                if module.weight.shape != (b.shape[0], a.shape[1]):
                    raise ValueError(f"adapter shape {(b.shape[0], a.shape[1])} does not fit {tuple(module.weight.shape)}")
                module.weight += self.settings.scale * (b @ a).to(module.weight.dtype)
        return model

    def head(self, feature_count: int, *, model_name: str, fingerprint: str, files: Sequence[str],
             counts: Sequence[tuple[str, int]] = ()) -> ParaphraseHead:
        """The classifier as a `ParaphraseHead` over the paraphrase layer's features, whose first
        columns are the sentence embedding: its weights there, zero on the other features."""
        import numpy as np

        weights = np.zeros((feature_count, len(self.classes)))
        weights[:self.weight.shape[1]] = LOGIT_SCALE * np.asarray(self.weight, "float64").T
        return ParaphraseHead(self.classes, weights, np.asarray(self.bias, "float64"), model_name, fingerprint,
                              tuple(files), self.excluded, l2=0.0, safe_share=self.settings.safe_share,
                              counts=tuple(counts))


def _target_modules(model: Any) -> list[Any]:
    return [layer.get_submodule(target) for layer in model.encoder.layer for target in TARGETS]


def _low_rank(base: Any, rank: int, scale: float, generator: Any) -> Any:
    """Training-time wrapper of a linear layer: base(x) + scale * x A^T B^T (B starts at zero, so
    the wrapped model starts as the base model)."""
    import torch

    class LowRank(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.base, self.scale = base, scale
            self.a = torch.nn.Parameter(torch.randn(rank, base.in_features, generator=generator)
                                        / math.sqrt(base.in_features))
            self.b = torch.nn.Parameter(torch.zeros(base.out_features, rank))

        def forward(self, x: Any) -> Any:
            return self.base(x) + (x @ self.a.T @ self.b.T) * self.scale

    return LowRank()


def fine_tune(model: Any, tokenizer: Any, examples: Sequence[Example], classes: Sequence[str], *, base_model: str,
              fingerprint: str, files: Sequence[str], excluded: Sequence[str] = (),
              settings: AdapterSettings = AdapterSettings(),
              progress: Callable[[int, float], None] | None = None) -> ParaphraseAdapter:
    """Train an adapter for `model` on `examples` (labels: SAFE or one of `classes`). The model is
    left as it was: the wrappers are removed and its weights untouched. `progress(epoch, loss)`."""
    import numpy as np
    import torch

    index = {name: i for i, name in enumerate(classes)}
    labels = np.array([index[example.label] for example in examples])
    texts = [example.text for example in examples]
    class_weight = torch.tensor(class_weights(labels, classes, settings.safe_share), dtype=torch.float32)

    generator = torch.Generator().manual_seed(settings.seed)
    order_rng = np.random.default_rng(settings.seed)
    modules = [(layer, target) for layer in model.encoder.layer for target in TARGETS]
    originals = _target_modules(model)  # in the same order
    wrappers = [_low_rank(base, settings.rank, settings.scale, generator) for base in originals]
    requires_grad = [parameter.requires_grad for parameter in model.parameters()]
    was_training = model.training
    classifier = torch.nn.Linear(int(model.config.hidden_size), len(classes))
    with torch.no_grad():  # seeded, not torch's global generator
        classifier.weight.normal_(0.0, 0.02, generator=generator)
        classifier.bias.zero_()
    try:
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        for (layer, target), wrapper in zip(modules, wrappers, strict=True):
            _set_submodule(layer, target, wrapper)
        trainable = [p for wrapper in wrappers for p in (wrapper.a, wrapper.b)] + list(classifier.parameters())
        optimiser = torch.optim.AdamW(trainable, lr=settings.learning_rate, weight_decay=0.01)
        steps = settings.epochs * math.ceil(len(texts) / settings.batch_size)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=settings.learning_rate,
                                                       total_steps=max(1, steps), pct_start=0.1)
        losses = []
        model.train()
        with torch.random.fork_rng(devices=[]):  # dropout draws from a seeded global generator
            torch.manual_seed(settings.seed)
            for epoch in range(settings.epochs):
                order, total = order_rng.permutation(len(texts)), 0.0
                for start in range(0, len(texts), settings.batch_size):
                    rows = order[start:start + settings.batch_size]
                    batch = tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                                      max_length=settings.max_length, return_tensors="pt")
                    logits = classifier(_pooled(model, batch) * LOGIT_SCALE)
                    target = torch.as_tensor(labels[rows])
                    weight = class_weight[target]
                    loss = (torch.nn.functional.cross_entropy(logits, target, reduction="none") * weight).sum() / weight.sum()
                    optimiser.zero_grad()
                    loss.backward()
                    optimiser.step()
                    schedule.step()
                    total += float(loss.detach()) * len(rows)
                losses.append(total / max(1, len(texts)))
                if progress is not None:
                    progress(epoch, losses[-1])
        factors = tuple((wrapper.a.detach().numpy().copy(), wrapper.b.detach().numpy().copy()) for wrapper in wrappers)
        weight, bias = classifier.weight.detach().numpy().copy(), classifier.bias.detach().numpy().copy()
    finally:
        for (layer, target), original in zip(modules, originals, strict=True):
            _set_submodule(layer, target, original)
        for parameter, flag in zip(model.parameters(), requires_grad, strict=True):
            parameter.requires_grad_(flag)
        model.train(was_training)
    return ParaphraseAdapter(factors, tuple(classes), weight, bias, settings, base_model, fingerprint, tuple(files), tuple(sorted(excluded)),
                             tuple(losses))


def _pooled(model: Any, batch: Any) -> Any:
    """Mean-pooled, L2-normalised last layer: the sentence embedding the encoder gives."""
    import torch

    hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return torch.nn.functional.normalize((hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9), dim=1)


def _set_submodule(layer: Any, path: str, module: Any) -> None:
    parent, _, name = path.rpartition(".")
    setattr(layer.get_submodule(parent), name, module)
