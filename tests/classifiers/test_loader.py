from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import pytest
from pydantic import ValidationError

from classifiers.classifier import load_classifier
from classifiers.errors import ModelUnavailableError
from classifiers.loader import _resolve, load_model
from classifiers.settings import ClassifierSettings, ConceptOverrides

from .conftest import TINY_ARCHITECTURE, TinyModels, colour_image, encode


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the loader tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def test_checkpoint_file_loads_with_identity_and_is_uncalibrated(tiny_models: TinyModels, tiny_classifier) -> None:
    identity = tiny_classifier.identity
    assert identity.architecture == TINY_ARCHITECTURE
    assert identity.checkpoint_sha256 == hashlib.sha256(tiny_models.checkpoint.read_bytes()).hexdigest()
    assert identity.embed_dim == 32
    assert not tiny_classifier.calibrated
    verdict = tiny_classifier.classify_batch([encode(colour_image("safe", 1))])[0]
    assert verdict.calibrated is False
    assert verdict.checkpoint_sha256 == identity.checkpoint_sha256
    assert verdict.to_dict()["uncalibrated"] is True
    assert "UNCALIBRATED" in verdict.summary()
    assert any("not declared trained" in reason for reason in verdict.uncalibrated_reasons)


def test_declared_trained_checkpoint_still_uncalibrated_without_concept_calibration(tiny_models: TinyModels) -> None:
    settings = ClassifierSettings(
        model=TINY_ARCHITECTURE, pretrained=None, checkpoint=tiny_models.checkpoint, checkpoint_trained=True
    )
    classifier = load_classifier(settings)
    assert classifier.uncalibrated_reasons == (
        f"concept thresholds not calibrated for {classifier.model_label}",
    )
    sha = classifier.identity.checkpoint_sha256
    calibrated = load_classifier(
        settings.model_copy(update={"concepts": ConceptOverrides(calibrated_for=[f"sha256:{sha}"])})
    )
    assert calibrated.calibrated
    verdict = calibrated.classify_batch([encode(colour_image("safe", 2))])[0]
    assert verdict.calibrated and "uncalibrated" not in verdict.to_dict()
    assert "UNCALIBRATED" not in verdict.summary()


def test_model_folder_loads_its_own_config_and_weights(tiny_models: TinyModels) -> None:
    settings = ClassifierSettings(checkpoint=tiny_models.folder, pretrained=None)
    loaded = load_model(settings)
    assert loaded.identity.architecture == f"local-dir:{tiny_models.folder.name}"
    assert loaded.identity.checkpoint_sha256 == hashlib.sha256(tiny_models.checkpoint.read_bytes()).hexdigest()
    normalise = [step for step in loaded.preprocess.transforms if type(step).__name__ == "Normalize"][0]  # type: ignore[attr-defined]
    assert list(normalise.mean) == [0.5, 0.5, 0.5]  # the folder's preprocess_cfg is used


def test_missing_weights_raise_a_clear_error(tiny_models: TinyModels, tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError, match="does not exist"):
        load_model(ClassifierSettings(model=TINY_ARCHITECTURE, pretrained=None, checkpoint=tmp_path / "missing.pt"))
    empty = tmp_path / "folder"
    empty.mkdir()
    with pytest.raises(ModelUnavailableError, match="open_clip_config.json"):
        load_model(ClassifierSettings(checkpoint=empty, pretrained=None))
    (empty / "open_clip_config.json").write_text((tiny_models.folder / "open_clip_config.json").read_text())
    with pytest.raises(ModelUnavailableError, match="no weights"):
        load_model(ClassifierSettings(checkpoint=empty, pretrained=None))


def test_corrupt_or_mismatched_checkpoint_is_a_clear_error(tmp_path: Path, tiny_models: TinyModels) -> None:
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelUnavailableError, match="cannot load"):
        load_model(ClassifierSettings(model=TINY_ARCHITECTURE, pretrained=None, checkpoint=corrupt))
    with pytest.raises(ModelUnavailableError, match="cannot load"):  # tiny weights into RN50
        load_model(ClassifierSettings(model="RN50", pretrained=None, checkpoint=tiny_models.checkpoint))


def test_unknown_architecture_and_tag(tiny_models: TinyModels) -> None:
    with pytest.raises(ModelUnavailableError, match="unknown open_clip architecture"):
        load_model(ClassifierSettings(model="No-Such-Model", pretrained="openai"))
    with pytest.raises(ModelUnavailableError, match="no pretrained tag"):
        load_model(ClassifierSettings(model="ViT-B-32", pretrained="no_such_tag"))


def test_no_weights_is_refused_unless_random_weights_are_allowed(tiny_models: TinyModels) -> None:
    with pytest.raises(ValidationError, match="no weights configured"):
        ClassifierSettings(model=TINY_ARCHITECTURE, pretrained=None)
    classifier = load_classifier(ClassifierSettings(model=TINY_ARCHITECTURE, pretrained=None, allow_random_weights=True))
    verdict = classifier.classify_batch([encode(colour_image("safe", 1))])[0]
    assert verdict.checkpoint_sha256 is None and not verdict.calibrated
    assert "random weights" in verdict.uncalibrated_reasons
    assert "(random weights)" in verdict.model


@pytest.mark.parametrize("tag", ["laion2b_s34b_b79k", "openai"])
def test_hf_hub_offline_without_cache_raises_instead_of_downloading(
    tag: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: None
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    settings = ClassifierSettings(model="ViT-B-32", pretrained=tag, cache_dir=tmp_path / "empty-cache")
    with pytest.raises(ModelUnavailableError, match="HF_HUB_OFFLINE"):
        load_model(settings)


def test_offline_setting_behaves_like_the_env_var(tmp_path: Path, no_network: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    settings = ClassifierSettings(model="ViT-B-32", pretrained="laion2b_s34b_b79k", cache_dir=tmp_path, offline=True)
    with pytest.raises(ModelUnavailableError, match="forbids downloading"):
        load_model(settings)


def test_local_copy_of_tagged_weights_gets_the_tags_preprocessing_and_quick_gelu(tmp_path: Path) -> None:
    weights = tmp_path / "ViT-B-32-openai.pt"
    weights.write_bytes(b"placeholder: _resolve only locates files")
    openai = _resolve(ClassifierSettings(model="ViT-B-32", pretrained="openai", checkpoint=weights))
    assert openai.quick_gelu is True and openai.checkpoint == weights
    assert openai.preprocess_overrides["interpolation"] == "bicubic"
    laion = _resolve(ClassifierSettings(model="ViT-B-32", pretrained="laion2b_s34b_b79k", checkpoint=weights))
    assert laion.quick_gelu is False
    forced = _resolve(
        ClassifierSettings(model="ViT-B-32", pretrained="laion2b_s34b_b79k", checkpoint=weights, force_quick_gelu=True)
    )
    assert forced.quick_gelu is True


def test_quick_gelu_reaches_the_built_model(tiny_models: TinyModels) -> None:
    from open_clip.transformer import QuickGELU

    loaded = load_model(
        ClassifierSettings(model=TINY_ARCHITECTURE, pretrained=None, checkpoint=tiny_models.checkpoint, force_quick_gelu=True)
    )
    assert any(isinstance(module, QuickGELU) for module in loaded.model.modules())
    plain = load_model(ClassifierSettings(model=TINY_ARCHITECTURE, pretrained=None, checkpoint=tiny_models.checkpoint))
    assert not any(isinstance(module, QuickGELU) for module in plain.model.modules())
