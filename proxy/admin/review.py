"""Flagged images held for review: which images to keep, and the audit record of a review decision.

A stage flags an image by giving it a verdict whose action is `flag`, or by a `flag` decision (for
one image with `image_index`, or for all of them). Before the exchange's audit record is written,
each flagged image is copied into the asset store and named in the record's `retained_images`
field with a new review item id; the audit store opens the review item in the same transaction as
the record. A reviewer's decision is itself an audit record, chained like every other, whose
`review` field closes the item (again in one transaction). So is an admin's read of the trail or
the queue (`admin_read_record`): who looked at which records and images, and when.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any

from policies.decisions import Action

from ..audit_record import new_audit_id
from ..exchange import Caller, Exchange
from ..stores.audit import ADMIN_READ

if TYPE_CHECKING:
    from ..app import Gateway


def new_review_id() -> str:
    return "rev_" + uuid.uuid4().hex


def flag_verdicts(exchange: Exchange, index: int) -> list[dict[str, Any]]:
    """The flags that concern image `index`: image-level decisions, request-level ones, its verdict."""
    verdicts = [
        decision.to_dict()
        for decision in exchange.decisions
        if decision.action is Action.FLAG and decision.image_index in (None, index)
    ]
    assert exchange.result is not None
    verdict = exchange.result.images[index].verdict
    if verdict and verdict.get("action") == Action.FLAG.value:
        verdicts.append({"stage": "output_classifier", **verdict})
    return verdicts


async def retain_images(gateway: Gateway, exchange: Exchange, record: dict[str, Any]) -> None:
    """Copy the images `audit.retain_images` asks for into the asset store and name them in the
    record; flagged ones get a review item. Raises OSError when an image cannot be stored (the
    caller then fails closed, like a failed audit write)."""
    mode = gateway.settings.audit.retain_images
    result = exchange.result
    if mode == "none" or result is None or exchange.error is not None:
        return
    retained = []
    for index, image in enumerate(result.images):
        if image.withheld:
            continue  # blocked content is never kept
        verdicts = flag_verdicts(exchange, index)
        if not verdicts and mode != "all":
            continue
        name = await gateway.assets.put(image.data, image.media_type)
        retained.append(
            {
                "index": index,
                "asset": name,
                "media_type": image.media_type,
                "sha256": image.sha256,
                "bytes": len(image.data),
                "verdicts": verdicts,
                "review_item": new_review_id() if verdicts else None,
            }
        )
    if retained:
        record["retained_images"] = retained


def review_record(item: dict[str, Any], caller: Caller, decision: str, note: str, policy_version: str) -> dict[str, Any]:
    """The audit record of one review decision (approve or reject)."""
    categories = sorted({v.get("category") for v in item.get("verdicts") or () if v.get("category")})
    return {
        "id": new_audit_id(),
        "time": time.time(),
        "operation": "review",
        "route": f"/v1/review/items/{item['id']}",
        "tenant": item["tenant"],
        "key_id": caller.key_id,
        "end_user": item.get("end_user"),
        "model": item.get("model"),
        "outcome": "review",
        "status": 200,
        "decisions": [
            {
                "stage": "review",
                "action": Action.ALLOW.value if decision == "approve" else Action.BLOCK.value,
                **({"category": categories[0]} if categories else {}),
                "reason": note or decision,
                "image_index": item.get("image_index"),
            }
        ],
        "review": {
            "item": item["id"],
            "decision": decision,
            "note": note,
            "subject_audit_id": item["audit_id"],
            "image_sha256": item.get("sha256"),
        },
        "policy_version": policy_version,
    }


def admin_read_record(
    caller: Caller,
    access: dict[str, Any],
    *,
    route: str,
    request_id: str | None,
    client_address: str | None,
    reader: str | None,
    policy_version: str,
) -> dict[str, Any]:
    """The audit record of one admin read: the admin's key (and name, when the `X-Imagegate-User`
    header gives one), and in `access` what was read: the resource, the query's filters, how many
    records or items came back and their ids (and the image index, for an image)."""
    return {
        "id": new_audit_id(),
        "time": time.time(),
        "request_id": request_id,
        "operation": ADMIN_READ,
        "route": route,
        "tenant": caller.tenant,
        "key_id": caller.key_id,
        "end_user": reader,
        "client_address": client_address,
        "outcome": ADMIN_READ,
        "status": 200,
        "decisions": [],
        "access": access,
        "policy_version": policy_version,
    }
