"""Trained heads: a linear or small MLP binary classifier per category on CLIP image embeddings.

In the manner of LAION's CLIP-based NSFW detector and the multi-headed safety classifier of the
Unsafe Diffusion paper: embeddings are L2-normalised, standardised with the training set's mean
and spread, and fed to one head per category (positives: that category's folder; negatives: `safe`
and every other category). A head file records the metrics it reached and the identity of the
embedding model it was trained for (architecture, pretrained tag, checkpoint SHA-256, size).

Must never: load a head under another embedding model (`HeadMismatchError`), unpickle arbitrary
objects (files are read with `weights_only=True`), or touch the global torch RNG state.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from torch import nn

from classifiers.errors import HeadError, HeadMismatchError, TrainingDataError
from classifiers.evaluation import SAFE_LABEL, binary_metrics
from classifiers.loader import ModelIdentity

HEAD_FORMAT = "imagegate-heads"
HEAD_FORMAT_VERSION = 1
HeadKind = Literal["linear", "mlp"]


class CategoryHead(nn.Module):
    """Standardise, then a linear layer or a one-hidden-layer MLP; outputs one logit per image."""

    mean: torch.Tensor
    scale: torch.Tensor

    def __init__(self, dim: int, kind: HeadKind = "linear", hidden: int = 64) -> None:
        super().__init__()
        self.kind: HeadKind = kind
        self.hidden = hidden
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))
        if kind == "linear":
            self.net: nn.Module = nn.Linear(dim, 1)
        elif kind == "mlp":
            self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(0.1), nn.Linear(hidden, 1))
        else:
            raise ValueError(f"unknown head kind {kind!r}")

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.net((embeddings - self.mean) / self.scale).squeeze(-1)


@dataclass(slots=True)
class TrainedHead:
    category: str
    module: CategoryHead
    threshold: float
    metrics: dict[str, Any]


@dataclass(slots=True)
class HeadSet:
    """The heads of one file, bound to the embedding model they were trained on."""

    identity: ModelIdentity
    heads: dict[str, TrainedHead]
    training: dict[str, Any] = field(default_factory=dict)

    @property
    def categories(self) -> list[str]:
        return list(self.heads)

    def probabilities(self, embeddings: torch.Tensor) -> dict[str, list[float]]:
        """Per category, the probability of each image (embeddings L2-normalised, N x D)."""
        out: dict[str, list[float]] = {}
        with torch.inference_mode():
            for name, head in self.heads.items():
                head.module.eval()
                out[name] = torch.sigmoid(head.module(embeddings.float().cpu())).tolist()
        return out

    def check_identity(self, identity: ModelIdentity) -> None:
        """Raise `HeadMismatchError` unless `identity` is the model these heads were trained for."""
        mine = self.identity
        if identity.checkpoint_sha256 is None:
            raise HeadMismatchError("trained heads need a model loaded from a checkpoint; random weights have no identity")
        if (mine.architecture, mine.checkpoint_sha256, mine.embed_dim) != (
            identity.architecture,
            identity.checkpoint_sha256,
            identity.embed_dim,
        ):
            raise HeadMismatchError(
                f"head was trained for {mine.label} (sha256 {mine.checkpoint_sha256}), "
                f"not for the loaded {identity.label} (sha256 {identity.checkpoint_sha256})"
            )

    def save(self, path: Path) -> None:
        payload = {
            "format": HEAD_FORMAT,
            "version": HEAD_FORMAT_VERSION,
            "identity": self.identity.to_dict(),
            "training": self.training,
            "heads": {
                name: {
                    "kind": head.module.kind,
                    "hidden": head.module.hidden,
                    "threshold": head.threshold,
                    "metrics": head.metrics,
                    "state_dict": {k: v.detach().cpu() for k, v in head.module.state_dict().items()},
                }
                for name, head in self.heads.items()
            },
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".tmp")
        torch.save(payload, temporary)
        temporary.replace(path)


def load_head_set(path: Path, identity: ModelIdentity | None = None) -> HeadSet:
    """Read a head file; with `identity`, refuse it unless it was trained for that model."""
    if not path.is_file():
        raise HeadError(f"head file {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and torch errors alike
        raise HeadError(f"cannot read head file {path}: {error}") from error
    if not isinstance(payload, dict) or payload.get("format") != HEAD_FORMAT:
        raise HeadError(f"{path} is not an imagegate head file")
    if payload.get("version") != HEAD_FORMAT_VERSION:
        raise HeadError(f"{path}: unsupported head file version {payload.get('version')!r}")
    try:
        head_identity = ModelIdentity.from_dict(payload["identity"])
        heads: dict[str, TrainedHead] = {}
        for name, entry in payload["heads"].items():
            module = CategoryHead(head_identity.embed_dim, entry["kind"], int(entry["hidden"]))
            module.load_state_dict(entry["state_dict"])
            module.eval()
            heads[name] = TrainedHead(name, module, float(entry["threshold"]), dict(entry["metrics"]))
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise HeadError(f"{path}: malformed head file: {error}") from error
    head_set = HeadSet(head_identity, heads, dict(payload.get("training", {})))
    if identity is not None:
        head_set.check_identity(identity)
    return head_set


def _split(labels: Sequence[str], val_fraction: float, generator: torch.Generator) -> tuple[list[int], list[int]]:
    """Stratified split: about `val_fraction` of each label to validation, at least one left to train."""
    train: list[int] = []
    val: list[int] = []
    for label in sorted(set(labels)):
        indices = [i for i, value in enumerate(labels) if value == label]
        order = [indices[i] for i in torch.randperm(len(indices), generator=generator).tolist()]
        n_val = min(len(order) - 1, math.ceil(len(order) * val_fraction)) if val_fraction > 0 else 0
        val.extend(order[:n_val])
        train.extend(order[n_val:])
    return sorted(train), sorted(val)


def _fit(
    embeddings: torch.Tensor, targets: torch.Tensor, kind: HeadKind, hidden: int, steps: int, lr: float, weight_decay: float
) -> CategoryHead:
    head = CategoryHead(embeddings.shape[1], kind, hidden)
    mean = embeddings.mean(dim=0)
    scale = embeddings.std(dim=0, unbiased=False).clamp_min(1e-6) if embeddings.shape[0] > 1 else torch.ones_like(mean)
    head.mean.copy_(mean)
    head.scale.copy_(scale)
    positives = float(targets.sum())
    negatives = float(targets.numel() - positives)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(negatives / max(positives, 1.0)))
    optimiser = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    head.train()
    for _ in range(steps):
        optimiser.zero_grad()
        loss = loss_fn(head(embeddings), targets)
        loss.backward()
        optimiser.step()
    head.eval()
    return head


def train_heads(
    embeddings: torch.Tensor,
    labels: Sequence[str],
    identity: ModelIdentity,
    *,
    kind: HeadKind = "linear",
    hidden: int = 64,
    steps: int = 300,
    lr: float = 1e-2,
    weight_decay: float = 1e-3,
    val_fraction: float = 0.2,
    threshold: float = 0.5,
    seed: int = 0,
) -> HeadSet:
    """Fit one head per category in `labels` ("safe" is the negative label) on normalised embeddings."""
    if embeddings.ndim != 2 or embeddings.shape[0] != len(labels):
        raise TrainingDataError("one embedding per label expected")
    if identity.checkpoint_sha256 is None:
        raise TrainingDataError("heads can only be trained on a model loaded from a checkpoint")
    categories = sorted(set(labels) - {SAFE_LABEL})
    if not categories:
        raise TrainingDataError("no category folders besides 'safe'")
    counts = {label: list(labels).count(label) for label in set(labels)}
    too_few = {label: count for label, count in counts.items() if count < 2}
    if too_few:
        raise TrainingDataError(f"need at least 2 images per label, got {too_few}")
    if not 0.0 <= val_fraction < 1.0:
        raise TrainingDataError("val_fraction must lie in [0, 1)")
    data = embeddings.detach().float().cpu()
    generator = torch.Generator().manual_seed(seed)
    train_idx, val_idx = _split(list(labels), val_fraction, generator)
    heads: dict[str, TrainedHead] = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for category in categories:
            target = torch.tensor([label == category for label in labels], dtype=torch.float32)
            head = _fit(data[train_idx], target[train_idx], kind, hidden, steps, lr, weight_decay)
            metrics: dict[str, Any] = {}
            for split_name, idx in (("train", train_idx), ("val", val_idx)):
                if not idx:
                    continue
                with torch.inference_mode():
                    probs = torch.sigmoid(head(data[idx])).tolist()
                truth = [bool(target[i]) for i in idx]
                result = binary_metrics(truth, [p > threshold for p in probs], probs).to_dict()
                metrics.update({f"{split_name}_{key}": value for key, value in result.items()})
            heads[category] = TrainedHead(category, head, threshold, metrics)
    training = {
        "kind": kind,
        "hidden": hidden if kind == "mlp" else 0,
        "steps": steps,
        "lr": lr,
        "weight_decay": weight_decay,
        "seed": seed,
        "val_fraction": val_fraction,
        "label_counts": dict(sorted(counts.items())),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return HeadSet(identity, heads, training)
