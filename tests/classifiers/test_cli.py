"""End to end through the CLI: train a head on a labelled folder, classify held-out files, evaluate."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from classifiers.heads import load_head_set
from proxy.commands import classify as classify_command

from .conftest import TinyModels


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="imagegate")
    classify_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return int(args.func(args))


@pytest.fixture(scope="module")
def cli_head(tiny_models: TinyModels, labelled_folders: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    train_dir, _ = labelled_folders
    out = tmp_path_factory.mktemp("cli") / "heads" / "colours.pt"
    code = run(
        ["classifier", "train-head", "--data", str(train_dir), "--out", str(out), "--checkpoint", str(tiny_models.folder), "--steps", "200"]
    )
    assert code == 0 and out.is_file()
    return out


def test_train_head_saves_metrics_and_model_identity(cli_head: Path, tiny_models: TinyModels) -> None:
    head_set = load_head_set(cli_head)
    assert head_set.identity.architecture == f"local-dir:{tiny_models.folder.name}"
    assert head_set.identity.checkpoint_sha256 is not None
    assert set(head_set.heads) == {"violence", "drugs"}
    assert all("val_accuracy" in head.metrics for head in head_set.heads.values())


def test_classify_json_with_head_labels_held_out_files(
    cli_head: Path, tiny_models: TinyModels, labelled_folders: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, heldout = labelled_folders
    files = sorted(heldout.glob("*/*.png"))
    code = run(["classify", *map(str, files), "--json", "--checkpoint", str(tiny_models.folder), "--head", str(cli_head)])
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == len(files)
    correct = 0
    for line in lines:
        assert line["uncalibrated"] is True and line["method"] == "head+concepts"
        label = Path(line["file"]).parent.name
        head_fired = {name for name in line["fired"] if name in ("violence", "drugs")}
        correct += head_fired == (set() if label == "safe" else {label})
    assert correct / len(lines) >= 0.9


def test_classify_text_output_and_bad_file(
    tiny_models: TinyModels, tmp_path: Path, labelled_folders: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"definitely not a png")
    good = sorted(labelled_folders[1].glob("safe/*.png"))[0]
    code = run(["classify", str(good), str(bad), "--checkpoint", str(tiny_models.folder)])
    out = capsys.readouterr().out
    assert code == 1
    assert f"{good}: " in out and "UNCALIBRATED" in out
    assert f"{bad}: error: data is not an image" in out


def test_classify_reports_unavailable_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = run(["classify", str(tmp_path / "x.png"), "--checkpoint", str(tmp_path / "missing.pt")])
    assert code == 2
    assert "does not exist" in capsys.readouterr().err


def test_eval_reports_metrics_per_category(
    cli_head: Path, tiny_models: TinyModels, labelled_folders: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, heldout = labelled_folders
    code = run(["classifier", "eval", "--data", str(heldout), "--checkpoint", str(tiny_models.folder), "--head", str(cli_head), "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["uncalibrated"] is True and report["images"] == 24
    for category in ("violence", "drugs"):
        metrics = report["categories"][category]
        assert metrics["positives"] == 8 and metrics["negatives"] == 16
        assert metrics["f1"] >= 0.85 and metrics["roc_auc"] >= 0.95
        assert set(metrics) >= {"precision", "recall", "f1", "roc_auc"}
    code = run(["classifier", "eval", "--data", str(heldout), "--checkpoint", str(tiny_models.folder), "--head", str(cli_head)])
    table = capsys.readouterr().out
    assert code == 0 and "ROC AUC" in table and "violence" in table and "UNCALIBRATED" in table
