"""Configuration: YAML, environment overrides, refusal of secrets, the embedded default."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.commands.serve import with_dev_tenant
from proxy.settings import ConfigError, load_settings
from proxy.stages.authenticate import key_digest


def test_no_file_runs_the_embedded_default() -> None:
    settings = load_settings(None, environ={})
    assert settings.provider_for("gpt-image-1") == "demo"
    assert settings.audit.backend == "sqlite"
    assert settings.server.data_dir == Path("imagegate-data")


def test_yaml_and_environment_overrides(tmp_path: Path) -> None:
    path = tmp_path / "imagegate.yaml"
    path.write_text(
        "server: {port: 9000}\n"
        "providers:\n  openai: {kind: openai, api_key_env: OPENAI_API_KEY, models: [gpt-image-1]}\n"
    )
    settings = load_settings(path, environ={"IMAGEGATE_SERVER__PORT": "9100", "IMAGEGATE_SERVER__LOG_PROMPTS": "true"})
    assert settings.server.port == 9100 and settings.server.log_prompts is True
    assert settings.providers["openai"].api_key({"OPENAI_API_KEY": "sk-x"}) == "sk-x"
    assert settings.providers["openai"].base_url == "https://api.openai.com/v1"


def test_secrets_in_yaml_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "imagegate.yaml"
    path.write_text("providers:\n  openai: {kind: openai, api_key: sk-live-123, models: [gpt-image-1]}\n")
    with pytest.raises(ConfigError, match="secrets are not read from the config file"):
        load_settings(path, environ={})


def test_typos_and_bad_values_are_errors(tmp_path: Path) -> None:
    path = tmp_path / "imagegate.yaml"
    path.write_text("server: {prot: 9000}\n")
    with pytest.raises(ConfigError, match="prot"):
        load_settings(path, environ={})
    path.write_text("tenants: {acme: {api_key_sha256: [plain-key]}}\n")
    with pytest.raises(ConfigError, match="SHA-256"):
        load_settings(path, environ={})


def test_demo_flag_forces_the_embedded_default(tmp_path: Path) -> None:
    path = tmp_path / "imagegate.yaml"
    path.write_text("providers:\n  openai: {kind: openai, api_key_env: K, models: [gpt-image-1]}\n")
    assert load_settings(path, environ={}, demo=True).provider_for("gpt-image-1") == "demo"


def test_dev_key_from_environment_or_generated() -> None:
    settings = load_settings(None, environ={})
    chosen, key, generated = with_dev_tenant(settings, {"IMAGEGATE_DEV_KEY": "my-dev-key"})
    assert key == "my-dev-key" and not generated
    assert chosen.tenants["dev"].api_key_sha256 == [key_digest("my-dev-key")]
    _, key2, generated2 = with_dev_tenant(settings, {})
    assert generated2 and key2 and key2.startswith("ig-dev-")


def test_policy_version_changes_with_rules_not_with_keys() -> None:
    base = load_settings(None, environ={})
    with_tenant, _, _ = with_dev_tenant(base, {"IMAGEGATE_DEV_KEY": "a"})
    other_key, _, _ = with_dev_tenant(base, {"IMAGEGATE_DEV_KEY": "b"})
    assert with_tenant.policy_version() == other_key.policy_version()
    stricter = base.model_copy(update={"prompt_filter": {"sexual": "block"}})
    assert stricter.policy_version() != base.policy_version()


def test_example_config_in_deploy_is_valid() -> None:
    path = Path(__file__).resolve().parents[2] / "deploy" / "imagegate.example.yaml"
    settings = load_settings(path, environ={})
    assert settings.provider_for("gpt-image-1") == "openai"
    assert settings.tenants["acme"].licence_profile["commercial_use"] is True
