"""Tests for `imagegate licenses check|list`, called through `proxy.cli.main`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import proxy.cli

CONFIG = """
server: {port: 8080}          # other sections belong to the main config and are ignored here
tenants:
  acme:
    api_keys_env: ACME_KEYS
    licence_profile:
      commercial_use: true
      annual_revenue_usd: 250000
      licences_held:
        - licence_id: bfl-flux-dev-commercial
          reference: BFL-2025-0042
          expires: 2026-06-30
      aliases:
        gpu-pool/flux-prod: flux-1-dev
  bigco:
    licence_profile:
      commercial_use: true
      annual_revenue_usd: 80000000
      unknown_model: block
  lab:
    licence_profile:
      commercial_use: false
  plain: {}
"""


@pytest.fixture(autouse=True)
def only_licence_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    """Other command modules are built in parallel; load only ours so these tests stand alone."""
    monkeypatch.setattr(proxy.cli, "COMMAND_MODULES", ["proxy.commands.licenses"])


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "imagegate.yaml"
    path.write_text(CONFIG, encoding="utf-8")
    return path


def run(*argv: str) -> int:
    return proxy.cli.main(["licenses", *argv])


def test_licenses_module_is_registered() -> None:
    source = Path(proxy.cli.__file__).read_text(encoding="utf-8")
    assert '"proxy.commands.licenses",' in source


def test_check_allowed_with_held_licence(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = run("check", "--model", "fal-ai/flux/dev", "--tenant", "acme", "--config", str(config), "--date", "2025-08-01")
    out = capsys.readouterr().out
    assert code == 0
    assert "allowed, with obligations" in out
    assert "FLUX.1 [dev] Non-Commercial License, v1.1.1" in out
    assert "BFL-2025-0042" not in out


def test_check_blocked_exits_one(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = run("check", "--model", "sd3.5-large", "--tenant", "bigco", "--config", str(config))
    out = capsys.readouterr().out
    assert code == 1
    assert "BLOCKED" in out
    assert "section III (Commercial Use)" in out


def test_check_expired_licence_on_a_later_date(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = run("check", "--model", "flux-dev", "--tenant", "acme", "--config", str(config), "--date", "2026-07-01")
    assert code == 1
    assert "expired on 2026-06-30" in capsys.readouterr().out


def test_check_json_is_the_audit_form(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = run(
        "check", "--model", "gpu-pool/flux-prod", "--tenant", "acme", "--config", str(config),
        "--date", "2025-08-01", "--json",
    )  # fmt: skip
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    assert data["tenant"] == "acme"
    assert data["resolved_entry"] == "flux-1-dev"
    assert data["action"] == "allow_with_obligations"
    assert data["held_licence"]["reference"] == "BFL-2025-0042"
    assert len(data["table_fingerprint"]) == 64


def test_check_provider_and_use_case(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = run("check", "--model", "flux-dev", "--provider", "bfl", "--tenant", "bigco", "--config", str(config), "--json")
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and data["licence_id"] == "bfl-flux-api-terms"


def test_check_unknown_model_blocked_for_strict_tenant(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("check", "--model", "acme/secret", "--tenant", "bigco", "--config", str(config)) == 1
    assert "not in imagegate's licence table" in capsys.readouterr().out


def test_check_without_config_uses_default_profile(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("check", "--model", "black-forest-labs/flux-schnell") == 0
    out = capsys.readouterr().out
    assert "tenant:    default" in out and "verdict:   allowed" in out
    assert run("check", "--model", "flux-1-dev") == 1


def test_check_needs_a_tenant_when_config_has_several(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("check", "--model", "sdxl", "--config", str(config)) == 2
    assert "--tenant" in capsys.readouterr().err


def test_unknown_tenant_and_bad_profile_are_usage_errors(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("check", "--model", "sdxl", "--tenant", "nobody", "--config", str(config)) == 2
    assert "unknown tenant 'nobody'" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("tenants:\n  x:\n    licence_profile: {comercial_use: true}\n", encoding="utf-8")
    assert run("check", "--model", "sdxl", "--config", str(bad)) == 2
    assert "invalid licence_profile" in capsys.readouterr().err
    assert run("list", "--config", str(tmp_path / "missing.yaml")) == 2


def test_list_all_tenants(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("list", "--config", str(config), "--date", "2025-08-01") == 0
    out = capsys.readouterr().out
    for tenant in ("acme", "bigco", "lab", "plain"):
        assert f"tenant {tenant}" in out
    assert "FLUX.1 [schnell]" in out and "BLOCKED" in out


def test_list_one_tenant_json(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("list", "--tenant", "lab", "--config", str(config), "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert list(data["tenants"]) == ["lab"]
    verdicts = {row["model"]: row["verdict"] for row in data["tenants"]["lab"]}
    assert verdicts["flux-1-dev"] == "allow_with_obligations"
    assert verdicts["flux-1-schnell"] == "allow"
    assert "block" not in verdicts.values()


def test_list_without_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("list") == 0
    assert "tenant default" in capsys.readouterr().out
