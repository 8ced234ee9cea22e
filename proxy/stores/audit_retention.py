"""Apply the retention policy to an audit store: redact fields, delete records, drop stored images.

`purge` asks `policies.retention.plan` what to do with each record old enough to matter and applies
it through the store: redaction replaces values by markers (the field digests stay, so the chain
still verifies), deletion leaves a tombstone (seq, id, time, hashes) and a deleted prefix is
compacted behind a signed anchor. Redacting `retained_images` or deleting a record also removes the
stored image files. Each purge that changed anything writes an audit record of its own.
`retention_loop` runs `purge` in the app every `audit.purge_interval_s` seconds.

Never destroy anything under a legal hold; never touch a record younger than the policy allows.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import structlog

from policies.retention import RetentionPolicy, plan, rule_description

from .assets import AssetStore
from .audit import AuditStore
from .audit_chain import CheckpointSigner, is_redacted, redaction_marker

log = structlog.get_logger("imagegate.retention")



@dataclass(slots=True)
class PurgeReport:
    dry_run: bool
    examined: int = 0
    redacted: dict[str, int] = field(default_factory=dict)
    deleted: int = 0
    held: int = 0
    compacted: int = 0
    images_removed: int = 0
    #: (audit id, what would be / was done), for `--dry-run` listings.
    actions: list[tuple[str, str]] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.redacted or self.deleted or self.compacted or self.images_removed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "examined": self.examined,
            "redacted": dict(self.redacted),
            "deleted": self.deleted,
            "held": self.held,
            "compacted": self.compacted,
            "images_removed": self.images_removed,
        }


async def purge(
    store: AuditStore,
    policy: RetentionPolicy,
    *,
    assets: AssetStore | None = None,
    signer: CheckpointSigner | None = None,
    now: float | None = None,
    dry_run: bool = False,
    page: int = 500,
    policy_version: str | None = None,
) -> PurgeReport:
    now = time.time() if now is None else now
    report = PurgeReport(dry_run=dry_run)
    youngest = policy.min_age_days()
    if youngest is None:
        return report
    before = now - youngest * 86400.0
    after = 0
    while True:
        records = await store.retention_candidates(before, after, page)
        if not records:
            break
        after = records[-1]["seq"]
        redactions: list[tuple[int, dict[str, Any]]] = []
        image_owners: list[str] = []
        deletions: list[int] = []
        deleted_ids: list[str] = []
        for record in records:
            report.examined += 1
            seq = record.pop("seq")
            fields = [name for name, value in record.items() if value is not None and not is_redacted(value)]
            action = plan(
                tenant=record.get("tenant"),
                end_user=record.get("end_user") if isinstance(record.get("end_user"), str) else None,
                created=float(record["time"]),
                fields=fields,
                now=now,
                policy=policy,
            )
            if action.held:
                report.held += 1
                continue
            if action.delete:
                report.deleted += 1
                deletions.append(seq)
                deleted_ids.append(record["id"])
                report.actions.append((record["id"], "delete"))
            elif action.redact:
                for name in action.redact:
                    report.redacted[name] = report.redacted.get(name, 0) + 1
                    record[name] = redaction_marker(rule_description(name, record.get("tenant"), policy), now)
                redactions.append((seq, record))
                if "retained_images" in action.redact:
                    image_owners.append(record["id"])
                report.actions.append((record["id"], "redact " + ",".join(action.redact)))
        if dry_run:
            continue
        if image_owners or deleted_ids:
            names = await store.forget_review_assets([*image_owners, *deleted_ids])
            report.images_removed += await assets.delete(names) if assets is not None else 0
        if redactions:
            await store.redact(redactions)
        if deletions:
            await store.tombstone(deletions)
    if not dry_run and signer is not None:
        report.compacted = await store.compact(signer)
    if not dry_run and report.changed:
        await store.append(
            {
                "id": "aud_" + uuid.uuid4().hex,
                "time": time.time(),
                "operation": "retention",
                "tenant": None,
                "outcome": "retention",
                "status": 200,
                "decisions": [],
                "policy_version": policy_version,
                "retention": report.to_dict(),
            }
        )
    return report


async def retention_loop(
    store: AuditStore,
    policy: RetentionPolicy,
    *,
    interval_s: float,
    assets: AssetStore | None,
    signer: CheckpointSigner | None,
    policy_version: str | None = None,
) -> None:
    """Purge now and then every `interval_s` seconds until cancelled; a failed run is logged and retried."""
    while True:
        try:
            report = await purge(store, policy, assets=assets, signer=signer, policy_version=policy_version)
            if report.changed or report.held:
                log.info("retention_purge", **report.to_dict())
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("retention_purge_failed", error=type(exc).__name__, detail=str(exc)[:500])
        await asyncio.sleep(interval_s)
