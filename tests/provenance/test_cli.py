"""`imagegate keys init-dev` and `imagegate provenance verify`, through the CLI entry point."""

from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
from pathlib import Path

import pytest

from provenance import ManifestSigner
from proxy import cli
from proxy.commands import keys, provenance
from tests.provenance.conftest import make_image, make_info


def main(argv: list[str]) -> int:
    """The CLI's dispatch with only these two command modules (others may not exist yet)."""
    parser = argparse.ArgumentParser(prog="imagegate")
    subparsers = parser.add_subparsers(dest="command")
    keys.register(subparsers)
    provenance.register(subparsers)
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_commands_are_registered_in_the_cli() -> None:
    assert "proxy.commands.keys" in cli.COMMAND_MODULES
    assert "proxy.commands.provenance" in cli.COMMAND_MODULES


def test_keys_init_dev_creates_then_reuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "keys"
    assert main(["keys", "init-dev", "--out", str(out)]) == 0
    first = capsys.readouterr().out
    assert "created DEVELOPMENT" in first and "PRIVATE KEY" not in first
    assert (out / "dev-root-ca.pem").is_file() and (out / "dev-signing-key.pem").is_file()
    assert main(["keys", "init-dev", "--out", str(out)]) == 0
    assert "reusing existing DEVELOPMENT C2PA credentials (es256)" in capsys.readouterr().out


def test_keys_init_dev_ed25519_replaces_only_the_signing_certificate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "keys"
    assert main(["keys", "init-dev", "--out", str(out)]) == 0
    root = (out / "dev-root-ca.pem").read_bytes()
    assert main(["keys", "init-dev", "--out", str(out), "--algorithm", "ed25519"]) == 0
    assert "created DEVELOPMENT C2PA credentials (ed25519)" in capsys.readouterr().out
    assert (out / "dev-root-ca.pem").read_bytes() == root  # verifiers' trust anchor unchanged
    # Without --algorithm the existing certificate is kept, whichever algorithm it has.
    assert main(["keys", "init-dev", "--out", str(out)]) == 0
    assert "reusing existing DEVELOPMENT C2PA credentials (ed25519)" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # argparse refuses what no development certificate can be
        main(["keys", "init-dev", "--out", str(out), "--algorithm", "ps256"])


@pytest.fixture()
def campaign(tmp_path: Path, signer: ManifestSigner) -> Path:
    folder = tmp_path / "campaign"
    (folder / "nested").mkdir(parents=True)
    png = signer.sign(make_image("PNG", 64), "image/png", make_info()).data
    (folder / "signed.png").write_bytes(png)
    jpeg = signer.sign(make_image("JPEG", 64), "image/jpeg", make_info()).data
    (folder / "nested" / "signed.jpg").write_bytes(jpeg)
    (folder / "nested" / "tampered.jpg").write_bytes(jpeg + b"tail")
    (folder / "nested" / "plain.webp").write_bytes(make_image("WEBP", 64))
    (folder / "notes.txt").write_text("not an image, skipped by the walk")
    return folder


def test_verify_folder_text_output_and_summary(
    campaign: Path, dev_credentials, capsys: pytest.CaptureFixture[str]
) -> None:
    anchors = str(dev_credentials.root_ca_file)
    code = main(["provenance", "verify", str(campaign), "--trust-anchors", anchors])
    out = capsys.readouterr().out
    assert code == 1  # one tampered image
    assert "TRUSTED  " + str(campaign / "signed.png") in out
    assert "INVALID  " + str(campaign / "nested" / "tampered.jpg") in out
    assert "changed after signing" in out
    assert "notes.txt" not in out
    assert (
        "4 images: 2 trusted, 0 valid (signer not trusted), 1 invalid, 1 without credentials" in out
    )


def test_verify_json_and_csv(
    campaign: Path, dev_credentials, capsys: pytest.CaptureFixture[str]
) -> None:
    anchors = str(dev_credentials.root_ca_file)
    signed = str(campaign / "signed.png")
    assert main(["provenance", "verify", signed, "--trust-anchors", anchors, "--json"]) == 0
    captured = capsys.readouterr()
    document = json.loads(captured.out)
    assert document["summary"]["trusted"] == 1
    result = document["results"][0]
    assert result["path"] == signed and result["state"] == "trusted"
    assert result["imagegate"]["audit_id"] == "audit-0001"
    assert "1 images" in captured.err  # the summary goes to stderr with --json

    assert main(["provenance", "verify", str(campaign), "--csv"]) == 1
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    states = {Path(row["path"]).name: row["state"] for row in rows}
    assert states == {
        "signed.png": "valid",  # no trust anchors given
        "signed.jpg": "valid",
        "tampered.jpg": "invalid",
        "plain.webp": "none",
    }
    tampered = next(row for row in rows if row["path"].endswith("tampered.jpg"))
    assert "assertion.dataHash.mismatch" in tampered["failure_codes"]


def test_verify_upstream_fixtures_and_missing_paths(
    tmp_path: Path, fixtures_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copy(fixtures_dir / "amazon-titan-g1.png", tmp_path / "titan.png")
    code = main(["provenance", "verify", str(tmp_path), str(tmp_path / "missing.png")])
    captured = capsys.readouterr()
    assert code == 1  # a missing path is an error
    assert "VALID    " in captured.out and "Titan Image Generator G1" in captured.out
    assert "no such file or folder" in captured.err


def test_require_credentials_fails_images_without_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain = tmp_path / "plain.png"
    plain.write_bytes(make_image("PNG", 32))
    assert main(["provenance", "verify", str(plain)]) == 0
    assert main(["provenance", "verify", str(plain), "--require-credentials"]) == 1
    capsys.readouterr()


@pytest.fixture()
def sidecar_campaign(tmp_path: Path, settings) -> tuple[Path, bytes]:
    """Images signed in sidecar mode, each with its `.c2pa` next to it, plus edge cases."""
    from provenance import load_signing_credentials

    sidecar_settings = settings.model_copy(update={"mode": "sidecar"})
    sidecar_signer = ManifestSigner(load_signing_credentials(sidecar_settings), sidecar_settings)
    folder = tmp_path / "sidecars"
    folder.mkdir()
    try:
        png = make_image("PNG", 64, seed=4)
        signed = sidecar_signer.sign(png, "image/png", make_info())
        (folder / "banner.png").write_bytes(signed.data)
        (folder / "banner.png.c2pa").write_bytes(signed.manifest_store or b"")
        jpeg = make_image("JPEG", 64, seed=5)
        other = sidecar_signer.sign(jpeg, "image/jpeg", make_info())
        (folder / "altered.jpg").write_bytes(jpeg + b"tail")
        (folder / "altered.c2pa").write_bytes(other.manifest_store or b"")  # c2patool's naming
    finally:
        sidecar_signer.close()
    return folder, signed.manifest_store or b""


def test_verify_picks_up_sidecars_next_to_images(
    sidecar_campaign: tuple[Path, bytes], dev_credentials, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, _ = sidecar_campaign
    anchors = str(dev_credentials.root_ca_file)
    code = main(["provenance", "verify", str(folder), "--trust-anchors", anchors])
    out = capsys.readouterr().out
    assert code == 1  # the altered image
    assert "TRUSTED  " + str(folder / "banner.png") in out and "sidecar banner.png.c2pa" in out
    assert "INVALID  " + str(folder / "altered.jpg") in out and "sidecar altered.c2pa" in out
    assert "2 images: 1 trusted" in out  # the .c2pa files are not images of their own

    assert main(["provenance", "verify", str(folder), "--ignore-sidecars", "--json"]) == 1
    document = json.loads(capsys.readouterr().out)
    states = {Path(r["path"]).name: r["state"] for r in document["results"]}
    assert states["banner.png"] == "none" and states["altered.jpg"] == "none"
    assert {Path(r["path"]).name for r in document["results"] if r["error"]} == {
        "banner.png.c2pa",
        "altered.c2pa",
    }


def test_verify_with_an_explicit_manifest(
    sidecar_campaign: tuple[Path, bytes],
    tmp_path: Path,
    dev_credentials,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder, store = sidecar_campaign
    anchors = str(dev_credentials.root_ca_file)
    elsewhere = tmp_path / "manifest-store.c2pa"
    elsewhere.write_bytes(store)
    image = str(folder / "banner.png")
    assert main(["provenance", "verify", image, "--manifest", str(elsewhere), "--trust-anchors", anchors, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)["results"][0]
    assert result["state"] == "trusted" and result["manifest_source"] == "sidecar"
    assert result["sidecar"] == str(elsewhere)

    assert main(["provenance", "verify", str(folder / "altered.jpg"), "--manifest", str(elsewhere), "--csv"]) == 1
    row = next(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert row["state"] == "invalid" and row["sidecar"] == str(elsewhere)

    assert main(["provenance", "verify", image, image, "--manifest", str(elsewhere)]) == 2
    assert main(["provenance", "verify", str(folder), "--manifest", str(elsewhere)]) == 2
    assert main(["provenance", "verify", image, "--manifest", str(tmp_path / "missing.c2pa")]) == 2
    assert "--manifest needs exactly one image file" in capsys.readouterr().err


def test_a_sidecar_without_its_image_is_an_error(
    sidecar_campaign: tuple[Path, bytes], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, store = sidecar_campaign
    orphan = tmp_path / "orphan.c2pa"
    orphan.write_bytes(store)
    assert main(["provenance", "verify", str(orphan)]) == 1
    out = capsys.readouterr().out
    assert "ERROR    " + str(orphan) in out and "--manifest orphan.c2pa" in out
