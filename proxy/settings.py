"""imagegate's configuration: one YAML file validated by pydantic, overridable by environment.

Precedence, lowest first: built-in defaults, the YAML file, `IMAGEGATE_*` environment variables
(nested with a double underscore: `IMAGEGATE_SERVER__PORT=9000`, values parsed as YAML scalars or
JSON). Secrets never come from the YAML file: provider keys are named by the environment variable
that holds them (`api_key_env`), and a YAML file that carries an `api_key` is refused.

This module only parses and validates; it never opens sockets, files other than the config, or
databases.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from policies.retention import RetentionPolicy

ENV_PREFIX = "IMAGEGATE_"


class Model(BaseModel):
    """Base for every config section: unknown keys are errors, so typos never pass silently."""

    model_config = ConfigDict(extra="forbid")


class ServerSettings(Model):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    #: Largest request body accepted (JSON or multipart), in bytes.
    max_body_bytes: int = Field(50 * 1024 * 1024, gt=0)
    #: Seconds a client may take to send its request body; a slower one gets 408 (slowloris guard).
    body_timeout_s: float = Field(60.0, gt=0)
    #: Where the embedded default keeps its SQLite audit log, assets and dev certificates.
    data_dir: Path = Path("./imagegate-data")
    #: Public base URL for links handed to clients (URL responses); default: the request's host.
    public_base_url: str | None = None
    #: Seconds an asset URL handed to a client stays valid.
    asset_url_ttl_s: int = Field(3600, gt=0)
    #: Allow fetching image URLs (provenance verification) from private and loopback addresses.
    #: Off by default: a public gateway must not become a way into the private network.
    fetch_private_addresses: bool = False
    #: Log the full prompt in structured logs (the audit record is governed by the tenant policy).
    log_prompts: bool = False
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: str = "info"


#: Per provider kind: the documented base URL, the usual key variable and the hosts its image URLs
#: come from (`*.` matches any subdomain). Each can be overridden in the provider's settings.
PROVIDER_DEFAULTS: dict[str, dict[str, Any]] = {
    "openai": {"base_url": "https://api.openai.com/v1", "api_key_env": None, "image_url_hosts": []},
    "stability": {"base_url": "https://api.stability.ai", "api_key_env": "STABILITY_API_KEY", "image_url_hosts": []},
    "bfl": {"base_url": "https://api.bfl.ai", "api_key_env": "BFL_API_KEY", "image_url_hosts": ["*.bfl.ai", "bfldeliverysc.blob.core.windows.net"]},
    "replicate": {"base_url": "https://api.replicate.com", "api_key_env": "REPLICATE_API_TOKEN", "image_url_hosts": ["replicate.delivery", "*.replicate.delivery"]},
    "fal": {"base_url": "https://queue.fal.run", "api_key_env": "FAL_KEY", "image_url_hosts": ["fal.media", "*.fal.media"]},
    "google": {"base_url": "https://generativelanguage.googleapis.com", "api_key_env": "GEMINI_API_KEY", "image_url_hosts": []},
}


class ProviderSettings(Model):
    """One upstream. `kind` picks the implementation; `models` the model ids it serves."""

    kind: Literal["openai", "demo", "stability", "bfl", "replicate", "fal", "google"]
    base_url: str | None = None
    #: Name of the environment variable that holds the upstream API key (never the key itself).
    api_key_env: str | None = None
    models: list[str] = Field(default_factory=list)
    timeout_s: float = Field(120.0, gt=0)
    connect_timeout_s: float = Field(10.0, gt=0)
    #: Demo provider only: seconds each generation takes, to imitate a real provider.
    delay_s: float = Field(0.0, ge=0)
    #: Hosts from which images returned as URLs may be fetched.
    image_url_hosts: list[str] = Field(default_factory=list)
    #: Networks (CIDR) admitted for image URLs besides public addresses, e.g. a provider reached over
    #: a private link. Empty by default: private, loopback and link-local addresses are refused.
    image_url_networks: list[str] = Field(default_factory=list)
    #: Largest image fetched from a provider URL, and the time allowed for one fetch.
    image_max_bytes: int = Field(50 * 1024 * 1024, gt=0)
    image_fetch_timeout_s: float = Field(30.0, gt=0)
    #: Asynchronous upstream APIs: seconds between two polls of a pending job.
    poll_interval_s: float = Field(0.5, gt=0)

    @model_validator(mode="after")
    def _kind_defaults(self) -> ProviderSettings:
        defaults = PROVIDER_DEFAULTS.get(self.kind)
        if defaults is None:
            return self
        if not self.base_url:
            self.base_url = defaults["base_url"]
        if self.api_key_env is None and "api_key_env" not in self.model_fields_set:
            self.api_key_env = defaults["api_key_env"]
        if not self.image_url_hosts and "image_url_hosts" not in self.model_fields_set:
            self.image_url_hosts = list(defaults["image_url_hosts"])
        return self

    @field_validator("image_url_networks")
    @classmethod
    def _networks(cls, values: list[str]) -> list[str]:
        import ipaddress

        for value in values:
            ipaddress.ip_network(value, strict=False)
        return values

    def api_key(self, environ: Mapping[str, str] | None = None) -> str | None:
        if not self.api_key_env:
            return None
        return (environ if environ is not None else os.environ).get(self.api_key_env)


class TenantSettings(Model):
    """A customer of the gateway: who may call, and under which policy."""

    #: SHA-256 hex digests of the tenant's API keys (`printf %s "$KEY" | sha256sum` prints one).
    api_key_sha256: list[str] = Field(default_factory=list)
    #: Keys with admin rights (audit queries, review queue) for this tenant.
    admin_key_sha256: list[str] = Field(default_factory=list)
    #: "full" keeps the prompt in the audit record, "hash" keeps only its SHA-256.
    audit_prompts: Literal["full", "hash"] = "full"
    #: Per-tenant sections read by the policy stages (prompt filter, licences, limits...).
    prompt_policy: dict[str, Any] = Field(default_factory=dict)
    licence_profile: dict[str, Any] = Field(default_factory=dict)
    limits: dict[str, Any] = Field(default_factory=dict)

    @field_validator("api_key_sha256", "admin_key_sha256")
    @classmethod
    def _hex_digests(cls, values: list[str]) -> list[str]:
        for value in values:
            if not re.fullmatch(r"[0-9a-f]{64}", value):
                raise ValueError("API keys are stored as lowercase SHA-256 hex digests, never in clear")
        return values


class AuditSettings(Model):
    backend: Literal["sqlite", "postgres"] = "sqlite"
    #: SQLite file; relative paths are under `server.data_dir`.
    sqlite_path: Path = Path("audit.sqlite3")
    #: PostgreSQL DSN, or the name of an environment variable holding it via `dsn_env`.
    dsn_env: str | None = None
    #: Records written per transaction at most (group commit); a record is acknowledged only once
    #: its transaction is durable.
    max_batch: int = Field(256, gt=0)
    #: SQLite only: a record that finds the writer idle is committed at once on the event loop,
    #: saving two thread wake-ups; inline commits slower than this (3 of the last 50) turn that off for 30 s
    #: (a slow disk must not stall the loop). 0 sends every record through the writer thread.
    inline_commit_max_ms: float = Field(5.0, ge=0, le=50)
    #: PostgreSQL schema holding the audit tables (created if missing).
    postgres_schema: str = Field("imagegate", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    #: A signed checkpoint of the hash chain every this many records, or every this many seconds.
    checkpoint_every: int = Field(1000, gt=0)
    checkpoint_interval_s: float = Field(60.0, gt=0)
    #: Ed25519 checkpoint key (PEM): from this environment variable if set, else this file
    #: (relative paths are under `server.data_dir`), created on first start.
    checkpoint_key_env: str | None = "IMAGEGATE_AUDIT_CHECKPOINT_KEY"
    checkpoint_key_file: Path = Path("audit-checkpoint.key")
    #: Which generated images keep a copy for reviewers: none, the flagged ones, or all.
    retain_images: Literal["none", "flagged", "all"] = "flagged"
    #: Every admin read of the trail or the review queue (`/v1/audit/...`, `/v1/review/...` GETs)
    #: writes an `admin_read` audit record first (who read what, when); false turns that off.
    log_admin_reads: bool = True
    #: Retention rules (`policies.retention.RetentionPolicy`): per tenant and per field, legal holds.
    retention: RetentionPolicy = Field(default_factory=RetentionPolicy)
    #: Seconds between two runs of the retention purge inside `imagegate serve`; 0 disables it
    #: (run `imagegate audit purge` from a scheduler instead).
    purge_interval_s: float = Field(3600.0, ge=0)


class AssetSettings(Model):
    """Where images served under imagegate's own URLs live (URL responses, jobs, review queue)."""

    #: `local`: a folder under `server.data_dir` (one replica); `s3`: an S3-compatible bucket that
    #: every replica shares (credentials from the AWS environment variables or a role, never YAML).
    backend: Literal["local", "s3"] = "local"
    s3_bucket: str | None = None
    s3_prefix: str = "imagegate/assets/"
    #: For MinIO, R2 and other S3-compatible stores; AWS itself needs none.
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    timeout_s: float = Field(10.0, gt=0)


class JobSettings(Model):
    """Where the outcomes of asynchronous jobs (BFL, Replicate, fal) are kept for polls."""

    #: `memory`: this process (one replica); `redis`: shared, so any replica answers any poll.
    backend: Literal["memory", "redis"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: Name of an environment variable holding the Redis URL (when it carries a password).
    redis_url_env: str | None = None
    key_prefix: str = "imagegate:jobs:"
    #: How long a job's record is kept after it was submitted.
    ttl_s: float = Field(86400.0, gt=0)


class TracingSettings(Model):
    """`tracing:` in the config."""

    enabled: bool = False
    #: otlp: OTLP over HTTP to `endpoint` (or $OTEL_EXPORTER_OTLP_TRACES_ENDPOINT /
    #: $OTEL_EXPORTER_OTLP_ENDPOINT, the SDK's own variables); console: spans as JSON on stdout.
    exporter: Literal["otlp", "console"] = "otlp"
    endpoint: str | None = None  # e.g. http://otel-collector:4318/v1/traces
    service_name: str = "imagegate"
    #: Fraction of new traces sampled; a caller's sampled/unsampled decision is always followed.
    sample_ratio: float = Field(1.0, ge=0.0, le=1.0)


class FailurePolicy(Model):
    """What happens when a safety stage itself fails (raises or times out)."""

    prompt_filter: Literal["closed", "open"] = "closed"
    input_images: Literal["closed", "open"] = "closed"
    output_classifier: Literal["closed", "open"] = "closed"
    provenance: Literal["closed", "open"] = "closed"


class Settings(Model):
    server: ServerSettings = Field(default_factory=ServerSettings)
    providers: dict[str, ProviderSettings] = Field(default_factory=dict)
    #: Model used when a request names none.
    default_model: str = "gpt-image-1"
    #: Provider that receives `/v1/...` paths imagegate does not handle itself; none disables it.
    passthrough_provider: str | None = None
    tenants: dict[str, TenantSettings] = Field(default_factory=dict)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    assets: AssetSettings = Field(default_factory=AssetSettings)
    jobs: JobSettings = Field(default_factory=JobSettings)
    failure_policy: FailurePolicy = Field(default_factory=FailurePolicy)
    tracing: TracingSettings = Field(default_factory=TracingSettings)
    #: Sections owned by the library packages, validated by their own models where they are used.
    prompt_filter: dict[str, Any] = Field(default_factory=dict)
    classifier: dict[str, Any] = Field(default_factory=dict)
    provenance: dict[str, Any] = Field(default_factory=dict)
    licences: dict[str, Any] = Field(default_factory=dict)
    limits: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_references(self) -> Settings:
        if self.passthrough_provider and self.passthrough_provider not in self.providers:
            raise ValueError(f"passthrough_provider {self.passthrough_provider!r} is not a provider")
        seen: dict[str, str] = {}
        for name, provider in self.providers.items():
            for model in provider.models:
                if model in seen:
                    raise ValueError(f"model {model!r} is served by both {seen[model]!r} and {name!r}")
                seen[model] = name
        return self

    def provider_for(self, model: str) -> str | None:
        """The provider that serves `model`, or None when no provider lists it."""
        for name, provider in self.providers.items():
            if model in provider.models:
                return name
        return None

    def policy_version(self) -> str:
        """A stable hash of every rule in force, written into audit records and manifests."""
        policy = self.model_dump(
            mode="json",
            include={
                "tenants": True,
                "failure_policy": True,
                "prompt_filter": True,
                "classifier": True,
                "licences": True,
                "limits": True,
                "audit": {"retention"},
            },
        )
        for tenant in policy.get("tenants", {}).values():
            tenant.pop("api_key_sha256", None)
            tenant.pop("admin_key_sha256", None)
        canonical = json.dumps(policy, sort_keys=True, separators=(",", ":"))
        return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()[:16]


DEMO_MODELS = ["gpt-image-1", "gpt-image-1.5", "gpt-image-1-mini", "dall-e-2", "dall-e-3", "demo"]


def embedded_default() -> dict[str, Any]:
    """The configuration `imagegate serve` runs with when no file is given."""
    return {
        "providers": {"demo": {"kind": "demo", "models": list(DEMO_MODELS), "delay_s": 0.0}},
        "default_model": "gpt-image-1",
        # The demo runs where no CLIP weights may be cached: use them if they are, never download
        # them silently, and record `skipped` (with the reason) on every request when they are not.
        "classifier": {"required": False, "offline": True},
    }


class ConfigError(ValueError):
    """The configuration file or environment is invalid; the message says where and why."""


_SECRET_KEYS = {"api_key", "private_key", "private_key_pem", "password", "secret"}


def url_from(section: str, url: str, url_env: str | None) -> str:
    """A section's service URL: from the variable `url_env` names when set (URLs that carry a
    password), else `url`; a named variable that is not set is a configuration error."""
    if not url_env:
        return url
    value = os.environ.get(url_env, "")
    if not value:
        raise ConfigError(f"{section}.redis_url_env names {url_env!r}, which is not set")
    return value


def _refuse_secrets(data: Any, path: str = "") -> None:
    if isinstance(data, dict):
        for key, value in data.items():
            if str(key).lower() in _SECRET_KEYS:
                raise ConfigError(
                    f"{path}{key}: secrets are not read from the config file; "
                    "put them in an environment variable and name it (for example `api_key_env`)"
                )
            _refuse_secrets(value, f"{path}{key}.")


def _parse_env_value(raw: str) -> Any:
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def _apply_env(data: dict[str, Any], environ: Mapping[str, str]) -> None:
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX) :].split("__")]
        if path[0] not in Settings.model_fields:
            continue  # IMAGEGATE_DEV_KEY and friends are read where they are used
        target = data
        for part in path[:-1]:
            child = target.get(part)
            if not isinstance(child, dict):
                child = {}
                target[part] = child
            target = child
        target[path[-1]] = _parse_env_value(raw)


def load_settings(
    path: Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    demo: bool = False,
) -> Settings:
    """Read the YAML file (if any), apply environment overrides and validate.

    With no file, or with `demo=True`, the embedded default is the base.
    """
    environ = os.environ if environ is None else environ
    data: dict[str, Any]
    if path is None or demo:
        data = embedded_default()
    else:
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        _refuse_secrets(loaded)
        data = loaded
        if not data.get("providers"):
            data.setdefault("providers", embedded_default()["providers"])
    _apply_env(data, environ)
    try:
        return Settings.model_validate(data)
    except ValueError as exc:
        raise ConfigError(f"invalid configuration: {exc}") from exc
