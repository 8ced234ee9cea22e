"""Fixtures for the classifier tests: tiny open_clip models saved as real checkpoint files.

The tiny architecture is registered with open_clip from a JSON config written to a temporary folder,
instantiated with a fixed seed, and saved as a checkpoint file (and as a model folder), so every test
goes through the real loading path. Its weights are random: every verdict must say `uncalibrated`.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TINY_ARCHITECTURE = "imagegate-tiny-test"
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}

#: Colour families of the synthetic labelled images (label -> mean RGB).
COLOURS = {"violence": (210, 40, 40), "drugs": (40, 190, 60), "safe": (40, 60, 210)}


@dataclass(frozen=True)
class TinyModels:
    config_dir: Path
    checkpoint: Path  # torch.save(state_dict) of the seed-0 model
    other_checkpoint: Path  # same architecture, seed 1
    folder: Path  # open_clip_config.json + open_clip_pytorch_model.bin (seed-0 weights)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    import open_clip
    import torch

    root = tmp_path_factory.mktemp("tiny-open-clip")
    config_dir = root / "configs"
    config_dir.mkdir()
    (config_dir / f"{TINY_ARCHITECTURE}.json").write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(config_dir)
    paths: list[Path] = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = open_clip.create_model(TINY_ARCHITECTURE)
        path = root / f"tiny-seed{seed}.pt"
        torch.save(model.state_dict(), path)
        paths.append(path)
    folder = root / "tiny-folder"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": TINY_CONFIG, "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}})
    )
    (folder / "open_clip_pytorch_model.bin").write_bytes(paths[0].read_bytes())
    return TinyModels(config_dir, paths[0], paths[1], folder)


@pytest.fixture(scope="session")
def tiny_settings(tiny_models: TinyModels):  # -> ClassifierSettings
    from classifiers.settings import ClassifierSettings

    return ClassifierSettings(model=TINY_ARCHITECTURE, pretrained=None, checkpoint=tiny_models.checkpoint, batch_size=8)


@pytest.fixture(scope="session")
def tiny_classifier(tiny_settings):  # -> ImageClassifier
    from classifiers.classifier import load_classifier

    return load_classifier(tiny_settings)


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def colour_image(label: str, seed: int, size: int = 40) -> Image.Image:
    """A noisy image around the label's colour; each seed gives a different shade and noise."""
    rng = np.random.default_rng(seed)
    base = np.array(COLOURS[label], dtype=np.float64) + rng.uniform(-35, 35, size=3)
    pixels = base[None, None, :] + rng.normal(0, 18, size=(size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def write_labelled_folder(root: Path, per_label: int, seed_offset: int) -> Path:
    for label in COLOURS:
        (root / label).mkdir(parents=True, exist_ok=True)
        for index in range(per_label):
            colour_image(label, seed_offset + index).save(root / label / f"{index:03d}.png")
    return root


@pytest.fixture(scope="session")
def labelled_folders(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """(training folder, held-out folder) of synthetic colour images, disjoint seeds."""
    root = tmp_path_factory.mktemp("labelled")
    yield write_labelled_folder(root / "train", 16, 0), write_labelled_folder(root / "heldout", 8, 10_000)
