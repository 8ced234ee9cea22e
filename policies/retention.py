"""Retention rules for the audit trail, as data: how long each field and each record is kept.

A `RetentionPolicy` holds a default `RetentionRule`, per-tenant overrides (merged field by field
over the default) and legal holds. `plan(...)` is the pure decision for one record: given its age,
tenant, end user and the fields it still carries, which fields to redact now and whether to delete
it. A legal hold on the record's tenant (or on its end user) suspends every destructive action:
nothing under hold is redacted or deleted, until the hold is lifted or expires.

Field names are the audit record's top-level fields (`prompt`, `negative_prompt`, `client_address`,
`end_user`, `retained_images` for the stored copies of flagged images, ...). The identity of a
record (`id`, `time`, `tenant`) can never be redacted: deletion is the way to remove a record.

No I/O, no clock: the caller passes `now`.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timezone

from pydantic import BaseModel, ConfigDict, Field, field_validator

DAY_S = 86400.0
#: Fields that identify a record; they are never redacted.
IDENTITY_FIELDS = frozenset({"id", "time", "tenant", "seq"})


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RetentionRule(_Model):
    #: Field name -> days after which its value is replaced by a redaction marker (None: never).
    redact_after_days: dict[str, float | None] = Field(default_factory=dict)
    #: Days after which the whole record is deleted (a tombstone keeps the chain); None: never.
    delete_after_days: float | None = None

    @field_validator("redact_after_days")
    @classmethod
    def _no_identity_fields(cls, value: dict[str, float | None]) -> dict[str, float | None]:
        for name, days in value.items():
            if name in IDENTITY_FIELDS:
                raise ValueError(f"field {name!r} identifies the record and cannot be redacted; delete the record instead")
            if days is not None and days < 0:
                raise ValueError(f"retention of {name!r} must be at least 0 days")
        return value


class LegalHold(_Model):
    """Suspends redaction and deletion of a tenant's records, or of one end user's records."""

    tenant: str
    #: None: the whole tenant.
    end_user: str | None = None
    reason: str = ""
    #: The hold ends at this moment; None: until removed from the policy.
    until: datetime | None = None

    def covers(self, tenant: str | None, end_user: str | None, now: float) -> bool:
        if self.tenant != tenant:
            return False
        if self.end_user is not None and self.end_user != end_user:
            return False
        if self.until is not None:
            until = self.until if self.until.tzinfo else self.until.replace(tzinfo=timezone.utc)
            if until.timestamp() <= now:
                return False
        return True


def _default_rule() -> RetentionRule:
    return RetentionRule(
        redact_after_days={"prompt": 30, "negative_prompt": 30, "retained_images": 90},
        delete_after_days=400,
    )


class RetentionPolicy(_Model):
    default: RetentionRule = Field(default_factory=_default_rule)
    #: Per-tenant rules, merged over the default: a field named here overrides the default's
    #: (null keeps that field forever); `delete_after_days`, when given, overrides the default's.
    tenants: dict[str, RetentionRule] = Field(default_factory=dict)
    legal_holds: list[LegalHold] = Field(default_factory=list)

    def rule_for(self, tenant: str | None) -> RetentionRule:
        override = self.tenants.get(tenant) if tenant is not None else None
        if override is None:
            return self.default
        delete = (
            override.delete_after_days if "delete_after_days" in override.model_fields_set else self.default.delete_after_days
        )
        return RetentionRule(
            redact_after_days={**self.default.redact_after_days, **override.redact_after_days},
            delete_after_days=delete,
        )

    def min_age_days(self) -> float | None:
        """The youngest age at which any rule acts (records younger need not be looked at)."""
        ages = [
            days
            for rule in (self.default, *self.tenants.values())
            for days in (*rule.redact_after_days.values(), rule.delete_after_days)
            if days is not None
        ]
        return min(ages) if ages else None

    def hold_for(self, tenant: str | None, end_user: str | None, now: float) -> LegalHold | None:
        for hold in self.legal_holds:
            if hold.covers(tenant, end_user, now):
                return hold
        return None


@dataclass(frozen=True, slots=True)
class RetentionAction:
    """What to do with one record now. `held` names the legal hold that suspended any action."""

    redact: tuple[str, ...] = ()
    delete: bool = False
    held: str | None = None

    @property
    def nothing(self) -> bool:
        return not self.redact and not self.delete


def plan(
    *,
    tenant: str | None,
    end_user: str | None,
    created: float,
    fields: Collection[str],
    now: float,
    policy: RetentionPolicy,
) -> RetentionAction:
    """The retention action for one record created at `created` that still carries `fields`
    (present, non-null, not yet redacted)."""
    rule = policy.rule_for(tenant)
    age_days = (now - created) / DAY_S
    delete = rule.delete_after_days is not None and age_days >= rule.delete_after_days
    redact = tuple(
        sorted(
            name
            for name in fields
            if name not in IDENTITY_FIELDS
            and (days := rule.redact_after_days.get(name)) is not None
            and age_days >= days
        )
    )
    if not delete and not redact:
        return RetentionAction()
    hold = policy.hold_for(tenant, end_user, now)
    if hold is not None:
        return RetentionAction(held=hold.reason or f"legal hold on {hold.tenant}{'/' + hold.end_user if hold.end_user else ''}")
    return RetentionAction(redact=() if delete else redact, delete=delete)


def rule_description(field: str, tenant: str | None, policy: RetentionPolicy) -> str:
    """How a redaction marker names the rule that applied, e.g. `prompt after 30 days`."""
    days = policy.rule_for(tenant).redact_after_days.get(field)
    return f"{field} after {days:g} days"
