"""Loading an open_clip model from a pretrained tag, a local checkpoint file or a local folder.

Weights are always resolved to one local file first (downloaded into the cache only when allowed),
so every model has a checkpoint SHA-256 that identifies it in verdicts, audit records and trained
heads. The tag's preprocessing (mean, std, interpolation, resize mode) and QuickGELU setting follow
the weights even when they come from a local copy. `HF_HUB_OFFLINE` (or `offline: true`) is read at
load time and means: the cache or nothing.

Must never: fall back to other weights or to random weights when the configured ones are missing
(random weights need `allow_random_weights`, and are marked untrained), touch the network when
offline, or run on the event loop (it is blocking; callers use a thread).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import open_clip
import torch
from PIL import Image

from classifiers.errors import ModelUnavailableError
from classifiers.settings import ClassifierSettings

_PREFERRED_WEIGHT_FILES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
    "model.safetensors",
    "pytorch_model.bin",
    "pytorch_model.pth",
    "model.pth",
)
_PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode", "fill_color")
_TRUE_VALUES = {"1", "true", "yes", "on"}


@dataclass(frozen=True, slots=True)
class ModelIdentity:
    """Which embedding model produced an embedding: what a head is bound to, what a verdict names."""

    architecture: str  # open_clip architecture name, or "local-dir:<folder name>"
    pretrained: str | None  # the pretrained tag the weights came from, when known
    checkpoint_sha256: str | None  # None only for random weights
    embed_dim: int

    @property
    def label(self) -> str:
        """Human-readable name: "ViT-B-32/laion2b_s34b_b79k", "ViT-B-32 (checkpoint 1a2b3c4d)"."""
        if self.checkpoint_sha256 is None:
            return f"{self.architecture} (random weights)"
        if self.pretrained:
            return f"{self.architecture}/{self.pretrained}"
        return f"{self.architecture} (checkpoint {self.checkpoint_sha256[:12]})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "architecture": self.architecture,
            "pretrained": self.pretrained,
            "checkpoint_sha256": self.checkpoint_sha256,
            "embed_dim": self.embed_dim,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelIdentity:
        return cls(
            architecture=str(data["architecture"]),
            pretrained=data.get("pretrained"),
            checkpoint_sha256=data.get("checkpoint_sha256"),
            embed_dim=int(data["embed_dim"]),
        )


@dataclass(slots=True)
class LoadedModel:
    """An open_clip model in eval mode with its preprocessing, tokenizer and identity."""

    model: torch.nn.Module
    preprocess: Callable[[Image.Image], torch.Tensor]
    tokenizer: Callable[..., torch.Tensor]
    identity: ModelIdentity
    trained_weights: bool  # False for random weights and for checkpoints not declared trained
    device: torch.device
    source: str  # where the weights came from, for logs


@dataclass(frozen=True, slots=True)
class _ResolvedWeights:
    open_clip_name: str  # what to pass to open_clip (may be "local-dir:...")
    architecture: str
    checkpoint: Path | None
    pretrained_tag: str | None
    quick_gelu: bool
    preprocess_overrides: dict[str, Any]
    trained: bool
    source: str


def offline_mode(settings: ClassifierSettings) -> bool:
    """True when only cached weights may be used (settings or `HF_HUB_OFFLINE`, read now)."""
    return settings.offline or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE_VALUES


def file_sha256(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def find_weights_in_folder(folder: Path) -> Path | None:
    """The weights file open_clip would choose in a local model folder (same preference order)."""
    for name in _PREFERRED_WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    candidates = sorted(
        [*folder.glob("*.safetensors"), *folder.glob("*.bin"), *folder.glob("*.pth")],
        key=lambda path: (path.suffix != ".safetensors", path.name),
    )
    return candidates[0] if candidates else None


def _pretrained_cfg(architecture: str, tag: str) -> dict[str, Any]:
    cfg = open_clip.get_pretrained_cfg(architecture, tag)
    if not cfg:
        known = open_clip.list_pretrained_tags_by_model(architecture)
        raise ModelUnavailableError(
            f"open_clip has no pretrained tag {tag!r} for {architecture!r}"
            + (f"; known tags: {', '.join(known)}" if known else "")
        )
    return dict(cfg)


def _check_architecture(name: str) -> None:
    if open_clip.get_model_config(name) is None:
        raise ModelUnavailableError(
            f"unknown open_clip architecture {name!r}; for a custom one point `checkpoint` at a folder "
            "holding open_clip_config.json and the weights"
        )


def _download_tag_weights(cfg: dict[str, Any], label: str, cache_dir: Path | None, offline: bool) -> Path:
    """The local file holding a pretrained tag's weights, fetched only when not offline."""
    hub = cfg.get("hf_hub", "")
    url = cfg.get("url", "")
    if hub:
        from huggingface_hub import hf_hub_download

        repo_id, filename = os.path.split(hub)  # "org/repo/" -> default file names
        names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        if filename.endswith((".bin", ".pth")):
            names.insert(0, filename[:-4] + ".safetensors")
        last_error: Exception | None = None
        for name in names:
            try:
                return Path(
                    hf_hub_download(
                        repo_id=repo_id,
                        filename=name,
                        cache_dir=str(cache_dir) if cache_dir else None,
                        local_files_only=offline,
                    )
                )
            except Exception as error:  # huggingface_hub raises many types; all mean "not here"
                last_error = error
        where = f"the Hugging Face cache{f' {cache_dir}' if cache_dir else ''}"
        if offline:
            raise ModelUnavailableError(
                f"weights for {label} are not in {where} and HF_HUB_OFFLINE/offline forbids downloading "
                f"them (repository {repo_id}); download them beforehand or set `checkpoint` to a local copy"
            ) from last_error
        raise ModelUnavailableError(
            f"could not download weights for {label} from Hugging Face repository {repo_id}: {last_error}"
        ) from last_error
    if url:
        target_dir = cache_dir or Path("~/.cache/clip").expanduser()
        target = target_dir / os.path.basename(url)
        if target.is_file():
            return target
        if offline:
            raise ModelUnavailableError(
                f"weights for {label} are not cached at {target} and HF_HUB_OFFLINE/offline forbids "
                "downloading them; set `checkpoint` to a local copy"
            )
        try:
            return Path(open_clip.download_pretrained_from_url(url, cache_dir=str(target_dir)))
        except Exception as error:
            raise ModelUnavailableError(f"could not download weights for {label} from {url}: {error}") from error
    raise ModelUnavailableError(f"open_clip lists no download location for {label}")


def _resolve(settings: ClassifierSettings) -> _ResolvedWeights:
    offline = offline_mode(settings)
    tag = settings.pretrained
    if settings.checkpoint is not None:
        path = settings.checkpoint.expanduser()
        if path.is_dir():
            config = path / "open_clip_config.json"
            if not config.is_file():
                raise ModelUnavailableError(f"model folder {path} has no open_clip_config.json")
            weights = find_weights_in_folder(path)
            if weights is None:
                raise ModelUnavailableError(f"model folder {path} holds no weights file (.safetensors/.bin/.pth)")
            try:
                model_cfg = json.loads(config.read_text(encoding="utf-8")).get("model_cfg", {})
            except (OSError, ValueError) as error:
                raise ModelUnavailableError(f"cannot read {config}: {error}") from error
            return _ResolvedWeights(
                open_clip_name=f"local-dir:{path.resolve()}",
                architecture=f"local-dir:{path.resolve().name}",
                checkpoint=weights,
                pretrained_tag=None,
                quick_gelu=bool(settings.force_quick_gelu or model_cfg.get("quick_gelu", False)),
                preprocess_overrides={},
                trained=settings.checkpoint_trained,
                source=str(path),
            )
        if not path.is_file():
            raise ModelUnavailableError(f"checkpoint {path} does not exist")
        _check_architecture(settings.model)
        cfg = _pretrained_cfg(settings.model, tag) if tag else {}
        quick = settings.force_quick_gelu if settings.force_quick_gelu is not None else bool(cfg.get("quick_gelu"))
        return _ResolvedWeights(
            open_clip_name=settings.model,
            architecture=settings.model,
            checkpoint=path,
            pretrained_tag=None,
            quick_gelu=quick,
            preprocess_overrides={key: cfg[key] for key in _PREPROCESS_KEYS if key in cfg},
            trained=settings.checkpoint_trained,
            source=str(path),
        )
    _check_architecture(settings.model)
    if tag is None:
        if not settings.allow_random_weights:
            raise ModelUnavailableError("no weights configured (set `pretrained` or `checkpoint`)")
        return _ResolvedWeights(
            open_clip_name=settings.model,
            architecture=settings.model,
            checkpoint=None,
            pretrained_tag=None,
            quick_gelu=bool(settings.force_quick_gelu),
            preprocess_overrides={},
            trained=False,
            source="random initialisation",
        )
    cfg = _pretrained_cfg(settings.model, tag)
    label = f"{settings.model}/{tag}"
    weights = _download_tag_weights(cfg, label, settings.cache_dir, offline)
    quick = settings.force_quick_gelu if settings.force_quick_gelu is not None else bool(cfg.get("quick_gelu"))
    return _ResolvedWeights(
        open_clip_name=settings.model,
        architecture=settings.model,
        checkpoint=weights,
        pretrained_tag=tag,
        quick_gelu=quick,
        preprocess_overrides={key: cfg[key] for key in _PREPROCESS_KEYS if key in cfg},
        trained=True,
        source=f"{label} ({weights})",
    )


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ModelUnavailableError(f"invalid torch device {name!r}") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelUnavailableError("device 'cuda' configured but no CUDA device is available")
    return device


def load_model(settings: ClassifierSettings) -> LoadedModel:
    """Resolve, verify and load the configured open_clip model (blocking: seconds to a minute)."""
    if settings.torch_threads is not None:
        torch.set_num_threads(settings.torch_threads)
    device = _device(settings.device)
    resolved = _resolve(settings)
    checkpoint_sha = file_sha256(resolved.checkpoint) if resolved.checkpoint is not None else None
    kwargs: dict[str, Any] = {
        "device": device,
        "force_quick_gelu": resolved.quick_gelu,
        "cache_dir": str(settings.cache_dir) if settings.cache_dir else None,
    }
    if resolved.preprocess_overrides:
        kwargs["force_preprocess_cfg"] = resolved.preprocess_overrides
    if not resolved.open_clip_name.startswith("local-dir:"):  # a folder names its own weights
        kwargs["pretrained"] = str(resolved.checkpoint) if resolved.checkpoint else None
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(resolved.open_clip_name, **kwargs)
        tokenizer = open_clip.get_tokenizer(
            resolved.open_clip_name, cache_dir=str(settings.cache_dir) if settings.cache_dir else None
        )
    except ModelUnavailableError:
        raise
    except Exception as error:  # open_clip raises RuntimeError/ValueError/KeyError for bad weights
        raise ModelUnavailableError(
            f"cannot load {resolved.architecture} from {resolved.source}: {error}"
        ) from error
    model.eval()
    embed_dim = _embed_dim(model)
    identity = ModelIdentity(
        architecture=resolved.architecture,
        pretrained=resolved.pretrained_tag,
        checkpoint_sha256=checkpoint_sha,
        embed_dim=embed_dim,
    )
    return LoadedModel(
        model=model,
        preprocess=preprocess,  # type: ignore[arg-type]
        tokenizer=tokenizer,  # type: ignore[arg-type]
        identity=identity,
        trained_weights=resolved.trained,
        device=device,
        source=resolved.source,
    )


def _embed_dim(model: torch.nn.Module) -> int:
    projection = getattr(getattr(model, "visual", None), "output_dim", None)
    if isinstance(projection, int):
        return projection
    text_projection = getattr(model, "text_projection", None)
    if isinstance(text_projection, torch.Tensor):
        return int(text_projection.shape[-1])
    raise ModelUnavailableError("cannot determine the embedding size of the loaded model")


def encode_images(loaded: LoadedModel, images: Sequence[Image.Image], batch_size: int = 16) -> torch.Tensor:
    """L2-normalised image embeddings (N x D, float32, CPU) of RGB images, `batch_size` at a time."""
    embeddings = [  # preprocessed a batch at a time: never every image's tensor at once
        encode_pixels(loaded, [loaded.preprocess(image) for image in images[start : start + batch_size]], batch_size)
        for start in range(0, len(images), batch_size)
    ]
    return torch.cat(embeddings) if embeddings else torch.empty((0, loaded.identity.embed_dim))


def encode_pixels(loaded: LoadedModel, pixels: Sequence[torch.Tensor], batch_size: int = 16) -> torch.Tensor:
    """L2-normalised embeddings (N x D, float32, CPU) of already preprocessed images (C x H x W each)."""
    chunks: list[torch.Tensor] = []
    for start in range(0, len(pixels), batch_size):
        batch = torch.stack(list(pixels[start : start + batch_size]))
        with torch.inference_mode():
            features = loaded.model.encode_image(batch.to(loaded.device), normalize=True)  # type: ignore[operator]
        chunks.append(features.float().cpu())
    if not chunks:
        return torch.empty((0, loaded.identity.embed_dim))
    return torch.cat(chunks)
