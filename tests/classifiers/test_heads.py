from __future__ import annotations

from pathlib import Path

import pytest
import torch

from classifiers.classifier import load_classifier
from classifiers.errors import HeadError, HeadMismatchError, TrainingDataError
from classifiers.evaluation import scan_labelled_folder
from classifiers.heads import load_head_set, train_heads
from classifiers.loader import ModelIdentity, encode_images, load_model
from policies.decisions import Action

from .conftest import COLOURS, TinyModels, colour_image, encode


@pytest.fixture(scope="module")
def trained_head_file(tiny_classifier, labelled_folders: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    train_dir, _ = labelled_folders
    items = scan_labelled_folder(train_dir)
    images = [tiny_classifier.decode(item.path.read_bytes()) for item in items]
    embeddings = encode_images(tiny_classifier.loaded, images)
    head_set = train_heads(embeddings, [item.label for item in items], tiny_classifier.identity, steps=200, seed=0)
    assert set(head_set.heads) == {"violence", "drugs"}
    for head in head_set.heads.values():
        assert head.metrics["train_accuracy"] >= 0.9
        assert "val_accuracy" in head.metrics and head.metrics["val_positives"] >= 1
    assert head_set.identity == tiny_classifier.identity
    path = tmp_path_factory.mktemp("heads") / "head.pt"
    head_set.save(path)
    return path


def test_trained_head_separates_held_out_images(
    trained_head_file: Path, tiny_settings, labelled_folders: tuple[Path, Path]
) -> None:
    classifier = load_classifier(tiny_settings.model_copy(update={"head": trained_head_file}))
    assert classifier.method == "head+concepts"
    _, heldout = labelled_folders
    items = scan_labelled_folder(heldout)
    verdicts = classifier.classify_batch([item.path.read_bytes() for item in items])
    correct = 0
    for item, verdict in zip(items, verdicts, strict=True):
        assert verdict.method == "head+concepts" and not verdict.calibrated
        head_fired = {name for name in verdict.fired if name in ("violence", "drugs")}
        expected = set() if item.label == "safe" else {item.label}
        correct += head_fired == expected
    assert correct / len(items) >= 0.9
    red = classifier.classify_batch([encode(colour_image("violence", 777))])[0]
    assert red.scores["violence"] > red.thresholds["violence"] == 0.5
    assert red.action in (Action.BLUR, Action.BLOCK)  # violence -> blur unless a concept fired worse


def test_head_round_trip_gives_identical_probabilities(trained_head_file: Path, tiny_classifier) -> None:
    head_set = load_head_set(trained_head_file, tiny_classifier.identity)
    again = load_head_set(trained_head_file, tiny_classifier.identity)
    embeddings = encode_images(tiny_classifier.loaded, [colour_image(label, 5) for label in COLOURS])
    assert head_set.probabilities(embeddings) == again.probabilities(embeddings)
    assert head_set.training["steps"] == 200 and head_set.training["label_counts"]["safe"] == 16


def test_head_refuses_to_load_under_another_model(trained_head_file: Path, tiny_models: TinyModels, tiny_settings) -> None:
    other = load_model(tiny_settings.model_copy(update={"checkpoint": tiny_models.other_checkpoint}))
    with pytest.raises(HeadMismatchError, match="trained for"):
        load_head_set(trained_head_file, other.identity)
    with pytest.raises(HeadMismatchError):
        load_classifier(tiny_settings.model_copy(update={"checkpoint": tiny_models.other_checkpoint, "head": trained_head_file}))
    renamed = ModelIdentity("ViT-B-32", None, other.identity.checkpoint_sha256, 32)
    with pytest.raises(HeadMismatchError):
        load_head_set(trained_head_file, renamed)


def test_head_only_mode_and_threshold_override(trained_head_file: Path, tiny_settings) -> None:
    classifier = load_classifier(
        tiny_settings.model_copy(
            update={"head": trained_head_file, "concepts_for_uncovered": False, "head_thresholds": {"violence": 0.99}}
        )
    )
    assert classifier.method == "head" and classifier.categories == ["drugs", "violence"]
    verdict = classifier.classify_batch([encode(colour_image("drugs", 3))])[0]
    assert set(verdict.scores) == {"drugs", "violence"} and verdict.thresholds["violence"] == 0.99
    assert verdict.uncalibrated_reasons == ("checkpoint not declared trained (set checkpoint_trained)",)


def test_bad_head_files_and_training_data(tmp_path: Path, tiny_classifier) -> None:
    with pytest.raises(HeadError, match="does not exist"):
        load_head_set(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    torch.save({"format": "something-else"}, junk)
    with pytest.raises(HeadError, match="not an imagegate head"):
        load_head_set(junk)
    embeddings = torch.nn.functional.normalize(torch.randn(4, 32), dim=1)
    with pytest.raises(TrainingDataError, match="besides 'safe'"):
        train_heads(embeddings, ["safe"] * 4, tiny_classifier.identity)
    with pytest.raises(TrainingDataError, match="at least 2"):
        train_heads(embeddings, ["safe", "safe", "safe", "drugs"], tiny_classifier.identity)
