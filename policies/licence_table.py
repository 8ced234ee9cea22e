"""The licence table: which licence governs each image model, loaded from shipped YAML data.

The table lives in `policies/data/licences.yaml` with its own hand-kept `version`; `fingerprint` is
the sha256 of its canonical content (comments and layout do not count), so an audit record or a C2PA
manifest can name the exact rules a decision used. `LicenceTable.resolve` maps the many ids the same
weights go by (Hugging Face repos, Replicate and fal slugs, provider API names) to one entry,
matching case-insensitively and ignoring separators.

This module only reads its own data file (or one it is handed). It must never touch the network, a
database or a request exchange, and it must never guess a licence for a model it does not know:
`resolve` returns None and the caller applies the tenant's rule for unknown models.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_TABLE_PATH = Path(__file__).parent / "data" / "licences.yaml"

_SEPARATORS = re.compile(r"[^a-z0-9]+")
#: A Replicate-style pinned version (`owner/name:<64 hex>`) names the same weights as `owner/name`.
_VERSION_SUFFIX = re.compile(r":[0-9a-f]{32,}$", re.IGNORECASE)


def normalise_model_id(model_id: str) -> str:
    """Reduce an id to lower-case letters and digits: `FLUX.1-dev`, `flux_1_dev`, `flux1dev` match."""
    return _SEPARATORS.sub("", _VERSION_SUFFIX.sub("", model_id.strip()).lower())


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Threshold(_Frozen):
    """A size limit above which the free licence ends (revenue in USD, or monthly active users)."""

    metric: Literal["annual_revenue_usd", "monthly_active_users"]
    limit: float
    #: True when reaching the limit exactly already needs the paid licence ("at least"),
    #: False when only going past it does ("more than").
    limit_is_over: bool = False

    def exceeded_by(self, value: float) -> bool:
        return value >= self.limit if self.limit_is_over else value > self.limit


class HistoryItem(_Frozen):
    version: str
    change: str


class LicenceTerms(_Frozen):
    """One licence text or provider terms, with the clauses a decision relies on."""

    id: str
    name: str
    version: str
    source_url: str
    other_urls: tuple[str, ...] = ()
    kind: Literal["open_weights", "hosted_terms"]
    commercial: Literal["allowed", "forbidden", "revenue_threshold", "user_threshold"]
    threshold: Threshold | None = None
    commercial_clause: str
    commercial_rule: str
    outputs_commercial: bool | None = None
    outputs_clause: str = ""
    unlocked_by: tuple[str, ...] = ()
    unlock_name: str = ""
    obligations: tuple[str, ...] = ()
    commercial_obligations: tuple[str, ...] = ()
    non_commercial_obligations: tuple[str, ...] = ()
    licensed_obligations: tuple[str, ...] = ()
    notices: tuple[str, ...] = ()
    history: tuple[HistoryItem, ...] = ()
    evidence: str = ""
    notes: str = ""

    @model_validator(mode="after")
    def _threshold_matches_rule(self) -> LicenceTerms:
        needs_threshold = self.commercial in ("revenue_threshold", "user_threshold")
        if needs_threshold != (self.threshold is not None):
            raise ValueError(f"licence {self.id}: a threshold goes with, and only with, *_threshold")
        if self.threshold is not None:
            expected = "annual_revenue_usd" if self.commercial == "revenue_threshold" else "monthly_active_users"
            if self.threshold.metric != expected:
                raise ValueError(f"licence {self.id}: {self.commercial} needs metric {expected}")
        if self.unlocked_by and not self.unlock_name:
            raise ValueError(f"licence {self.id}: unlocked_by needs unlock_name")
        return self


class LicenceEntry(_Frozen):
    """One family of weights (or one hosted model line) and the licence that governs it."""

    id: str
    name: str
    licence: LicenceTerms
    aliases: tuple[str, ...] = ()
    #: provider name -> licence id that governs when this provider serves the model itself.
    provider_terms: dict[str, str] = Field(default_factory=dict)
    notes: str = ""

    @property
    def licence_id(self) -> str:
        return self.licence.id

    @property
    def licence_version(self) -> str:
        return self.licence.version

    @property
    def source_url(self) -> str:
        return self.licence.source_url


class _RawModel(_Frozen):
    id: str
    name: str
    licence: str
    aliases: tuple[str, ...] = ()
    provider_terms: dict[str, str] = Field(default_factory=dict)
    notes: str = ""


class _RawProvider(_Frozen):
    name: str
    spellings: tuple[str, ...] = ()


class _RawTable(_Frozen):
    version: str
    providers: dict[str, _RawProvider] = Field(default_factory=dict)
    licences: tuple[LicenceTerms, ...]
    models: tuple[_RawModel, ...]


class LicenceTable:
    """The loaded licence table: entries by id, licences by id, and the alias index."""

    def __init__(self, data: dict[str, Any]) -> None:
        raw = _RawTable.model_validate(data)
        self.version: str = raw.version
        self.fingerprint: str = hashlib.sha256(
            json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()
        ).hexdigest()
        self.licences: dict[str, LicenceTerms] = {}
        for terms in raw.licences:
            if terms.id in self.licences:
                raise ValueError(f"licence id {terms.id!r} appears twice")
            self.licences[terms.id] = terms
        self._providers: dict[str, str] = {}
        self._provider_display: dict[str, str] = {}
        for canonical, provider in raw.providers.items():
            self._provider_display[canonical] = provider.name
            for spelling in (canonical, *provider.spellings):
                self._providers[normalise_model_id(spelling)] = canonical
        self.entries: dict[str, LicenceEntry] = {}
        self._aliases: dict[str, str] = {}
        for model in raw.models:
            self._add_entry(model)

    def _add_entry(self, model: _RawModel) -> None:
        if model.id in self.entries:
            raise ValueError(f"model id {model.id!r} appears twice")
        for licence_id in (model.licence, *model.provider_terms.values()):
            if licence_id not in self.licences:
                raise ValueError(f"model {model.id!r} names unknown licence {licence_id!r}")
        entry = LicenceEntry(
            id=model.id,
            name=model.name,
            licence=self.licences[model.licence],
            aliases=model.aliases,
            provider_terms={self.provider_name(k): v for k, v in model.provider_terms.items()},
            notes=model.notes,
        )
        self.entries[model.id] = entry
        for alias in (model.id, *model.aliases):
            key = normalise_model_id(alias)
            owner = self._aliases.setdefault(key, model.id)
            if owner != model.id:
                raise ValueError(f"alias {alias!r} is claimed by both {owner!r} and {model.id!r}")

    @classmethod
    def load(cls, path: Path | None = None) -> LicenceTable:
        """Load a table from YAML; without a path, the table shipped with imagegate."""
        source = path or DEFAULT_TABLE_PATH
        data = yaml.safe_load(source.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"{source}: a licence table is a YAML mapping")
        return cls(data)

    def provider_name(self, provider: str) -> str:
        """The table's name for a provider (`black-forest-labs` -> `bfl`); unknown names pass through."""
        key = normalise_model_id(provider)
        return self._providers.get(key, key)

    def provider_display_name(self, provider: str) -> str:
        """How explanations name a provider (`bfl` -> "Black Forest Labs' own API")."""
        return self._provider_display.get(self.provider_name(provider), provider)

    def licence(self, licence_id: str) -> LicenceTerms:
        return self.licences[licence_id]

    def resolve(
        self,
        model_id: str,
        provider: str | None = None,
        aliases: dict[str, str] | None = None,
    ) -> LicenceEntry | None:
        """The entry for `model_id`, or None when the table does not know the model.

        `aliases` are a tenant's own names (a self-hosted endpoint's model name -> entry id); they
        win over the shipped aliases. A provider prefix (`replicate:owner/name`) is ignored.
        """
        candidates = [model_id]
        if provider and model_id.lower().startswith(provider.lower() + ":"):
            candidates.append(model_id[len(provider) + 1 :])
        for candidate in candidates:
            key = normalise_model_id(candidate)
            for alias, entry_id in (aliases or {}).items():
                if normalise_model_id(alias) == key:
                    if entry_id not in self.entries:
                        raise ValueError(f"tenant alias {alias!r} points at unknown entry {entry_id!r}")
                    return self.entries[entry_id]
            entry_id = self._aliases.get(key)
            if entry_id is not None:
                return self.entries[entry_id]
        return None

    def terms_for(self, entry: LicenceEntry, provider: str | None) -> LicenceTerms:
        """The terms that govern `entry` when `provider` serves it (a provider's own API may differ)."""
        if provider is not None:
            override = entry.provider_terms.get(self.provider_name(provider))
            if override is not None:
                return self.licences[override]
        return entry.licence
