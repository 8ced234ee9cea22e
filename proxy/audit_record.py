"""Turn a finished exchange into its audit record: plain JSON-able data, chosen field by field.

Fields are picked explicitly (never a dump of the exchange), so the client's credential, image
bytes and stage notes can never leak into the trail. The prompt is kept in full or as its hash, as
the tenant's policy says.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

from .exchange import Exchange


def new_audit_id() -> str:
    return "aud_" + uuid.uuid4().hex


def build_record(exchange: Exchange, *, prompt_mode: str = "full", status: int) -> dict[str, Any]:
    request = exchange.request
    result = exchange.result
    caller = exchange.caller
    record: dict[str, Any] = {
        "id": exchange.audit_id,
        "time": exchange.started_at,
        "request_id": exchange.request_id,
        "route": exchange.route,
        "operation": exchange.operation,
        "tenant": caller.tenant if caller else None,
        "key_id": caller.key_id if caller else None,
        "end_user": caller.end_user if caller else exchange.end_user_header,
        "client_address": exchange.client_address,
        "provider": exchange.provider,
        "status": status,
        "outcome": exchange_outcome(exchange),
        "decisions": [decision.to_dict() for decision in exchange.decisions],
        "licence": exchange.licence,
        "cost_estimate_usd": exchange.cost_estimate_usd,
        "cost_usd": exchange.cost_usd,
        "policy_version": exchange.policy_version,
        "latency_ms": round(exchange.elapsed_s() * 1000, 3),
    }
    if request is not None:
        prompt_sha256 = hashlib.sha256(request.prompt.encode("utf-8")).hexdigest()
        record.update(
            model=request.model,
            size=request.size,
            n=request.n,
            quality=request.quality,
            output_format=request.output_format,
            prompt=request.prompt if prompt_mode == "full" else None,
            negative_prompt=request.negative_prompt if prompt_mode == "full" else None,
            prompt_sha256=prompt_sha256,
            input_images=[
                {"sha256": image.sha256, "media_type": image.media_type, "role": image.role, "bytes": len(image.data)}
                for image in [*request.images, *([request.mask] if request.mask else [])]
            ],
        )
    if result is not None:
        record["upstream"] = {
            "status": result.upstream_status,
            "latency_ms": round(result.upstream_latency_s * 1000, 3),
            "usage": result.usage,
        }
        record["images"] = [
            {
                "index": index,
                "sha256": image.sha256,
                "media_type": image.media_type,
                "bytes": len(image.data),
                "released": not image.withheld and exchange.error is None,
                "blurred": image.blurred,
                "manifest_id": image.manifest_id,
                "upstream_manifest": image.upstream_manifest,
                "verdict": image.verdict,
            }
            for index, image in enumerate(result.images)
        ]
    if "verified" in exchange.notes:
        record["verified"] = exchange.notes["verified"]
    if exchange.error is not None:
        record["error"] = exchange.error.to_dict()
    return record


def exchange_outcome(exchange: Exchange) -> str:
    """allow, flag, blur, block or error: the single word audit filters and metrics use."""
    if exchange.error is not None:
        code = exchange.error.code
        if code in ("content_policy_violation", "licence_restriction"):
            return "block"
        if exchange.error.status < 500:
            return "rejected"
        return "error"
    return exchange.outcome.value if exchange.outcome.value != "skipped" else "allow"
