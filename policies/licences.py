"""Licence rules: may this tenant use this model, on what conditions, and which clause says so.

`decide_licence(table, profile, model_id, ...)` is a pure function. It resolves the model through the
licence table (`policies.licence_table`), reads the tenant's licence profile (commercial use or not,
annual revenue, monthly users, licences held with their expiry, per-use-case overrides) and returns a
`LicenceDecision`: allow, allow with obligations (attribution, notices, use restrictions to pass on),
or block, with a plain-English explanation that names the licence and the clause relied on. The
licence stage records `to_dict()` in the audit record and the C2PA manifest.

Choices made here, so compliance staff can find them:
- A commercial tenant whose revenue (or monthly users) is not stated, asking for a model whose free
  licence ends above a size threshold, is blocked by default (`unknown_threshold: block`): the
  licence is conditional on a fact imagegate cannot check, the fix is one line of config, and
  failing closed is the project's rule for safety stages. A tenant may set `unknown_threshold: warn`.
- A held licence counts only if it has not expired on `today` (the expiry day itself still counts).
- A model missing from the table gets the tenant's `unknown_model` rule (warn by default).

This module must never touch the network, a database or the request exchange, never log, and never
put a held licence's reference into the explanation (it goes only into the structured record).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from policies.decisions import Action, Decision
from policies.licence_table import LicenceEntry, LicenceTable, LicenceTerms, normalise_model_id

__all__ = [
    "HeldLicence",
    "LicenceDecision",
    "LicenceEntry",
    "LicenceOutcome",
    "LicenceTable",
    "LicenceTerms",
    "TenantLicenceProfile",
    "decide_licence",
]

STAGE = "licence"


class HeldLicence(BaseModel):
    """A licence or agreement the tenant holds, e.g. a commercial licence from Black Forest Labs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Which licence this is, as named in the table's `unlocked_by` (e.g. `bfl-flux-dev-commercial`).
    licence_id: str
    #: A contract number or key reference (never a secret); recorded, never shown in explanations.
    reference: str = ""
    #: Last day the licence is valid; None for no expiry.
    expires: date | None = None
    notes: str = ""

    def valid_on(self, day: date) -> bool:
        return self.expires is None or day <= self.expires


class TenantLicenceProfile(BaseModel):
    """What imagegate knows about a tenant for licence purposes (`licence_profile:` in the config)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    commercial_use: bool = True
    annual_revenue_usd: float | None = Field(default=None, ge=0)
    monthly_active_users: int | None = Field(default=None, ge=0)
    licences_held: tuple[HeldLicence, ...] = ()
    #: Use case name -> commercial (True) or not (False); overrides `commercial_use` for that use case.
    use_case_overrides: dict[str, bool] = Field(default_factory=dict)
    unknown_model: Literal["warn", "block"] = "warn"
    unknown_threshold: Literal["warn", "block"] = "block"
    #: The tenant's own model ids (e.g. a self-hosted endpoint's name) -> licence table entry id.
    aliases: dict[str, str] = Field(default_factory=dict)

    def is_commercial(self, use_case: str | None) -> bool:
        if use_case is not None:
            wanted = normalise_model_id(use_case)
            for name, commercial in self.use_case_overrides.items():
                if normalise_model_id(name) == wanted:
                    return commercial
        return self.commercial_use


class LicenceOutcome(str, Enum):
    """The licence stage's verdict."""

    ALLOW = "allow"
    ALLOW_WITH_OBLIGATIONS = "allow_with_obligations"
    BLOCK = "block"

    def to_action(self) -> Action:
        return Action.BLOCK if self is LicenceOutcome.BLOCK else Action.ALLOW


@dataclass(frozen=True, slots=True)
class LicenceDecision:
    """The licence decision for one request, as recorded in the audit record and C2PA manifest."""

    action: LicenceOutcome
    model_id: str
    explanation: str
    licence_id: str | None = None
    licence_name: str | None = None
    licence_version: str | None = None
    source_url: str | None = None
    clause: str | None = None
    obligations: tuple[str, ...] = ()
    notices: tuple[str, ...] = ()
    resolved_entry: str | None = None
    provider: str | None = None
    use_case: str | None = None
    commercial_use: bool | None = None
    held_licence: HeldLicence | None = None
    table_version: str = ""
    table_fingerprint: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def to_action(self) -> Action:
        return self.action.to_action()

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "action": self.action.value,
            "model_id": self.model_id,
            "resolved_entry": self.resolved_entry,
            "licence_id": self.licence_id,
            "licence_name": self.licence_name,
            "licence_version": self.licence_version,
            "source_url": self.source_url,
            "clause": self.clause,
            "obligations": list(self.obligations),
            "notices": list(self.notices),
            "explanation": self.explanation,
            "provider": self.provider,
            "use_case": self.use_case,
            "commercial_use": self.commercial_use,
            "held_licence": self.held_licence.model_dump(mode="json") if self.held_licence else None,
            "table_version": self.table_version,
            "table_fingerprint": self.table_fingerprint,
        }
        data.update(self.details)
        return data

    def to_decision(self) -> Decision:
        """The pipeline's common `Decision` for this verdict (stage `licence`)."""
        return Decision(
            stage=STAGE,
            action=self.to_action(),
            category=self.licence_id,
            reason=self.explanation,
            details=self.to_dict(),
        )


def decide_licence(
    table: LicenceTable,
    profile: TenantLicenceProfile,
    model_id: str,
    provider: str | None = None,
    use_case: str | None = None,
    today: date | None = None,
) -> LicenceDecision:
    """Decide whether `profile`'s tenant may use `model_id` (served by `provider`) for `use_case`."""
    day = today or date.today()
    commercial = profile.is_commercial(use_case)
    base: dict[str, Any] = {
        "model_id": model_id,
        "provider": provider,
        "use_case": use_case,
        "commercial_use": commercial,
        "table_version": table.version,
        "table_fingerprint": table.fingerprint,
    }
    entry = table.resolve(model_id, provider=provider, aliases=profile.aliases)
    if entry is None:
        return _unknown_model(table, profile, model_id, base)
    terms = table.terms_for(entry, provider)
    base.update(
        resolved_entry=entry.id,
        licence_id=terms.id,
        licence_name=terms.name,
        licence_version=terms.version,
        source_url=terms.source_url,
        notices=terms.notices,
    )
    intro = _intro(entry, terms, table.provider_display_name(provider) if provider else None)
    if not commercial:
        obligations = terms.obligations + terms.non_commercial_obligations
        clause = terms.commercial_clause
        why = (
            f"{intro} Your tenant profile says this use is not commercial"
            + (f" (use case \u201c{use_case}\u201d)" if use_case else "")
            + f", which the licence allows; {_obligation_phrase(obligations)}."
        )
        return _decision(obligations, why, clause, base)
    if terms.commercial == "allowed":
        obligations = terms.obligations + terms.commercial_obligations
        why = (
            f"{intro} The clause relied on is {terms.commercial_clause}: {_sentence(terms.commercial_rule)} "
            f"Commercial use is allowed; {_obligation_phrase(obligations)}."
        )
        return _decision(obligations, why, terms.commercial_clause, base)
    return _commercial_restricted(terms, profile, intro, day, base)


def _commercial_restricted(
    terms: LicenceTerms,
    profile: TenantLicenceProfile,
    intro: str,
    day: date,
    base: dict[str, Any],
) -> LicenceDecision:
    """Commercial use of a licence that forbids it, or allows it only below a size threshold."""
    rule = f"{intro} The clause relied on is {terms.commercial_clause}: {_sentence(terms.commercial_rule)}"
    held = [h for h in profile.licences_held if h.licence_id in terms.unlocked_by]
    valid = [h for h in held if h.valid_on(day)]
    if valid:
        obligations = terms.obligations + terms.licensed_obligations
        until = f"valid until {valid[0].expires}" if valid[0].expires else "with no expiry date"
        why = f"{rule} Your tenant profile holds {terms.unlock_name}, {until}; {_obligation_phrase(obligations)}."
        return _decision(obligations, why, terms.commercial_clause, {**base, "held_licence": valid[0]})
    expired_note = ""
    if held:
        latest = max(held, key=lambda h: h.expires or day)
        expired_note = f" Your tenant profile lists {terms.unlock_name}, but it expired on {latest.expires}."
        base = {**base, "held_licence": latest, "details": {"held_licence_expired": True}}
    if terms.threshold is not None:
        metric = terms.threshold.metric
        value = profile.annual_revenue_usd if metric == "annual_revenue_usd" else profile.monthly_active_users
        measure = "annual revenue" if metric == "annual_revenue_usd" else "monthly active users"
        if value is None:
            # An expired paid licence suggests the tenant was over the limit: never just warn then.
            if profile.unknown_threshold == "block" or held:
                why = (
                    f"{rule} Your tenant profile says commercial use but does not state its {measure}, so "
                    f"imagegate cannot tell whether the free licence still applies.{expired_note} State the "
                    f"{measure} in the tenant's licence profile ({metric}), or record {terms.unlock_name}."
                )
                return _block(why, terms.commercial_clause, base)
            obligations = (
                f"Confirm the tenant's {measure} is within the licence limit of {_amount(terms.threshold.limit, metric)}.",
                *terms.obligations,
                *terms.commercial_obligations,
            )
            why = f"{rule} Your tenant profile does not state its {measure}; it is set to warn rather than block, so {_obligation_phrase(obligations)}."
            return _decision(obligations, why, terms.commercial_clause, base)
        if not terms.threshold.exceeded_by(value):
            obligations = terms.obligations + terms.commercial_obligations
            why = (
                f"{rule} Your tenant profile gives {measure} of {_amount(value, metric)}, within the "
                f"limit of {_amount(terms.threshold.limit, metric)}, so commercial use is allowed; "
                f"{_obligation_phrase(obligations)}."
            )
            return _decision(obligations, why, terms.commercial_clause, base)
        why = (
            f"{rule} Your tenant profile gives {measure} of {_amount(value, metric)}, over the limit of "
            f"{_amount(terms.threshold.limit, metric)}, and holds no valid {_strip_article(terms.unlock_name)}.{expired_note}"
        )
        return _block(why, terms.commercial_clause, base)
    outputs = (
        " The licence does let outputs be used commercially, but running the model itself for a"
        " commercial service is a different use, and that is what this request does."
        if terms.outputs_commercial
        else ""
    )
    why = (
        f"{rule}{outputs} Your tenant profile says commercial use and holds no valid "
        f"{_strip_article(terms.unlock_name)}.{expired_note}"
    )
    return _block(why, terms.commercial_clause, base)


def _unknown_model(
    table: LicenceTable, profile: TenantLicenceProfile, model_id: str, base: dict[str, Any]
) -> LicenceDecision:
    where = f"imagegate's licence table (version {table.version})"
    if profile.unknown_model == "block":
        why = (
            f"The model \u201c{model_id}\u201d is an unknown model, not in {where}, and this tenant's "
            "licence profile blocks models whose licence imagegate cannot check. Add the model to the "
            "tenant's aliases if it is a known model under another name."
        )
        return _block(why, "the tenant's rule for unknown models", base)
    obligation = f"Check the licence of \u201c{model_id}\u201d by hand: it is not in the licence table."
    why = (
        f"The model \u201c{model_id}\u201d is an unknown model, not in {where}, so imagegate cannot check "
        "its licence; this tenant's licence profile lets such models through with a warning."
    )
    return _decision((obligation,), why, "the tenant's rule for unknown models", base)


def _intro(entry: LicenceEntry, terms: LicenceTerms, provider: str | None) -> str:
    version = "" if terms.version in terms.name else f" ({terms.version})"
    if terms.id != entry.licence.id:
        return (
            f"{entry.name} served by {provider} is governed by the {terms.name}{version} "
            f"rather than the {entry.licence.name}."
        )
    return f"{entry.name} is under the {terms.name}{version}."


def _decision(
    obligations: tuple[str, ...] | list[str], why: str, clause: str, base: dict[str, Any]
) -> LicenceDecision:
    outcome = LicenceOutcome.ALLOW_WITH_OBLIGATIONS if obligations else LicenceOutcome.ALLOW
    return LicenceDecision(action=outcome, explanation=why, clause=clause, obligations=tuple(obligations), **base)


def _block(why: str, clause: str, base: dict[str, Any]) -> LicenceDecision:
    return LicenceDecision(action=LicenceOutcome.BLOCK, explanation=why, clause=clause, **base)


def _obligation_phrase(obligations: tuple[str, ...] | list[str]) -> str:
    if not obligations:
        return "no obligations are passed on beyond the licence notice"
    count = len(obligations)
    return f"{count} obligation{'s' if count > 1 else ''} {'are' if count > 1 else 'is'} passed on with the images"


def _amount(value: float, metric: str) -> str:
    return f"USD {value:,.0f}" if metric == "annual_revenue_usd" else f"{value:,.0f}"


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith(".") else text + "."


def _strip_article(text: str) -> str:
    for article in ("a ", "an "):
        if text.startswith(article):
            return text[len(article) :]
    return text
