"""HTTP routes for compliance officers: the audit trail, the review queue and the `/admin/` page.

Every `/v1/audit/...` and `/v1/review/...` route needs an admin key, and a tenant's admin sees only
that tenant's records and review items (another tenant's record answers 404, as if it did not
exist). Cursors are opaque to clients (`d<seq>` newest first, `a<seq>` oldest first). The page
under `/admin/` is static HTML and JavaScript; it asks for the admin key and sends it as a Bearer
token, so it holds no session of its own.

Reading the trail is itself audited (`audit.log_admin_reads`): every successful GET of a record,
an image or the review queue writes an `admin_read` record before the answer is released, and the
answer is withheld (503 `audit_unavailable`) when that record cannot be written.
"""

from __future__ import annotations

import json
import re
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from ..errors import AuditUnavailableError, ImagegateError, InvalidRequestError, PermissionDeniedError
from ..exchange import Caller
from ..stores.assets import AssetNotFound
from ..stores.audit import AuditQuery, ReviewConflict, ReviewQuery
from ..stores.audit_chain import is_redacted
from .review import admin_read_record, review_record

STATIC = Path(__file__).parent / "static"
_STATIC_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; object-src 'none'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
MAX_LIMIT = 500
#: Query parameters an admin read's audit record keeps (the filters; never a credential).
_RECORD_FILTERS = ("tenant", "user", "model", "outcome", "decision", "category", "since", "until", "order", "cursor", "limit")
_REVIEW_FILTERS = ("status", "cursor", "limit")

log = structlog.get_logger("imagegate.admin")


def add_admin_routes(app: web.Application) -> None:
    """Register the routes; call before the `/v1/{tail}` pass-through catch-all."""
    app.router.add_get("/v1/audit/records", list_records)
    app.router.add_get("/v1/audit/records/{id}", get_record)
    app.router.add_get("/v1/audit/records/{id}/images/{index}", record_image)
    app.router.add_get("/v1/review/items", list_review_items)
    app.router.add_get("/v1/review/items/{id}", get_review_item)
    app.router.add_post("/v1/review/items/{id}", decide_review_item)
    app.router.add_get("/v1/review/items/{id}/image", review_item_image)
    app.router.add_get("/admin", admin_redirect)
    app.router.add_get("/admin/", admin_page)
    app.router.add_get("/admin/{name}", admin_static)


def _gateway(request: web.Request) -> Any:
    from ..app import GATEWAY

    return request.app[GATEWAY]


def require_admin(request: web.Request) -> Caller:
    from ..app import bearer_token

    caller: Caller = _gateway(request).authenticate.identify(bearer_token(request))
    if not caller.is_admin:
        raise PermissionDeniedError("This endpoint needs an admin key of your tenant.")
    return caller


def parse_time(value: str | None, name: str) -> float | None:
    """Epoch seconds, an ISO 8601 date or time (UTC when no zone is given), or an age such as `30d`."""
    if value is None or value == "":
        return None
    value = value.strip()
    match = _RELATIVE.match(value)
    if match:
        return time.time() - float(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    try:
        return float(value)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise InvalidRequestError(
            f"Invalid {name} {value!r}: use epoch seconds, an ISO 8601 date or time, or an age like 7d.", param=name
        ) from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def _limit(request: web.Request, default: int = 50) -> int:
    raw = request.query.get("limit", str(default))
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise InvalidRequestError(f"limit must be an integer from 1 to {MAX_LIMIT}.", param="limit")
    return int(raw)


def _not_found(what: str) -> ImagegateError:
    return ImagegateError(f"No such {what}.", status=404, code="not_found")


async def _audited(request: web.Request, caller: Caller, response: web.Response, access: dict[str, Any]) -> web.Response:
    """Write the audit record of this admin read, then release `response`; fail closed when the
    record cannot be written, as the proxy does for an exchange."""
    gateway = _gateway(request)
    if not gateway.settings.audit.log_admin_reads:
        return response
    from ..app import REQUEST_ID

    reader = request.headers.get("X-Imagegate-User") or None
    record = admin_read_record(
        caller,
        access,
        route=request.path,
        request_id=request.get(REQUEST_ID),
        client_address=request.remote,
        reader=reader[:256] if reader else None,
        policy_version=gateway.policy_version,
    )
    try:
        await gateway.audit.append(record)
    except Exception as exc:
        gateway.metrics.audit_failures.inc()
        log.error("audit_write_failed_read_refused", audit_id=record["id"], route=request.path, error=str(exc)[:500])
        raise AuditUnavailableError("This read could not be recorded in the audit log, so its result is withheld.") from exc
    response.headers["X-Imagegate-Audit-Id"] = record["id"]
    return response


def _known_parameters(request: web.Request, names: tuple[str, ...]) -> None:
    """Refuse a query parameter the route does not take: a typo (`?modle=`) must not silently
    widen what a compliance officer reads."""
    for name in request.query:
        if name not in names:
            raise InvalidRequestError(
                f"Unknown query parameter {name[:64]!r}; this route takes {', '.join(names)}.", param=name[:64]
            )


def _filters(request: web.Request, names: tuple[str, ...]) -> dict[str, str]:
    return {name: request.query[name][:256] for name in names if request.query.get(name)}


async def list_records(request: web.Request) -> web.Response:
    caller = require_admin(request)
    _known_parameters(request, _RECORD_FILTERS)
    q = request.query
    if q.get("tenant") and q["tenant"] != caller.tenant:
        raise PermissionDeniedError("An admin key reads only its own tenant's audit records.", param="tenant")
    order = q.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequestError("order must be asc or desc.", param="order")
    cursor = q.get("cursor")
    after_seq, before_seq = 0, None
    if cursor is not None:
        if not re.fullmatch(r"[ad]\d{1,18}", cursor) or cursor[0] != order[0]:
            raise InvalidRequestError("Invalid cursor: pass back next_cursor unchanged, with the same order.", param="cursor")
        if order == "asc":
            after_seq = int(cursor[1:])
        else:
            before_seq = int(cursor[1:])
    limit = _limit(request)
    query = AuditQuery(
        tenant=caller.tenant,
        end_user=q.get("user") or None,
        model=q.get("model") or None,
        outcome=q.get("outcome") or None,
        decision=q.get("decision") or None,
        category=q.get("category") or None,
        since=parse_time(q.get("since"), "since"),
        until=parse_time(q.get("until"), "until"),
        after_seq=after_seq,
        before_seq=before_seq,
        order=order,  # type: ignore[arg-type]
        limit=limit,
    )
    records = await _gateway(request).audit.query(query)
    next_cursor = f"{order[0]}{records[-1]['seq']}" if len(records) == limit else None
    response = web.json_response({"object": "list", "data": records, "next_cursor": next_cursor}, dumps=_dumps)
    access = {
        "resource": "audit_records",
        "filters": _filters(request, _RECORD_FILTERS),
        "returned": len(records),
        "ids": [record["id"] for record in records],
    }
    return await _audited(request, caller, response, access)


async def _own_record(request: web.Request) -> tuple[Caller, dict[str, Any]]:
    caller = require_admin(request)
    record = await _gateway(request).audit.get(request.match_info["id"])
    if record is None or record.get("tenant") != caller.tenant:
        raise _not_found("audit record")
    return caller, record


async def get_record(request: web.Request) -> web.Response:
    caller, record = await _own_record(request)
    items = await _gateway(request).audit.review_items(ReviewQuery(tenant=record["tenant"], status=None, audit_id=record["id"]))
    record["review_items"] = [_public_item(item) for item in items]
    response = web.json_response(record, dumps=_dumps)
    return await _audited(request, caller, response, {"resource": "audit_record", "returned": 1, "ids": [record["id"]]})


async def _asset(request: web.Request, name: str | None, media_type: str | None) -> web.Response:
    if not name:
        raise _not_found("retained image (it was never kept, or retention removed it)")
    try:
        data = await _gateway(request).assets.get(name)
    except AssetNotFound as exc:
        raise _not_found("retained image (retention removed it)") from exc
    return web.Response(body=data, content_type=media_type or "application/octet-stream", headers={"Cache-Control": "private, no-store"})


async def record_image(request: web.Request) -> web.Response:
    caller, record = await _own_record(request)
    retained = record.get("retained_images")
    if not isinstance(retained, list):
        raise _not_found("retained image (it was never kept, or retention removed it)")
    for image in retained:
        if str(image.get("index")) == request.match_info["index"]:
            response = await _asset(request, image.get("asset"), image.get("media_type"))
            access = {
                "resource": "audit_record_image",
                "returned": 1,
                "ids": [record["id"]],
                "image_index": image.get("index"),
                "image_sha256": image.get("sha256"),
            }
            return await _audited(request, caller, response, access)
    raise _not_found("retained image")


def _public_item(item: dict[str, Any]) -> dict[str, Any]:
    public = {key: value for key, value in item.items() if key != "asset"}
    public["image_retained"] = item.get("asset") is not None
    public["image_url"] = f"/v1/review/items/{item['id']}/image" if item.get("asset") else None
    return public


async def list_review_items(request: web.Request) -> web.Response:
    caller = require_admin(request)
    _known_parameters(request, _REVIEW_FILTERS)
    status = request.query.get("status", "pending")
    if status not in ("pending", "approved", "rejected", "all"):
        raise InvalidRequestError("status must be pending, approved, rejected or all.", param="status")
    limit = _limit(request)
    items = await _gateway(request).audit.review_items(
        ReviewQuery(tenant=caller.tenant, status=None if status == "all" else status, after=request.query.get("cursor") or None, limit=limit)
    )
    next_cursor = items[-1]["id"] if len(items) == limit else None
    response = web.json_response({"object": "list", "data": [_public_item(i) for i in items], "next_cursor": next_cursor}, dumps=_dumps)
    access = {
        "resource": "review_items",
        "filters": _filters(request, _REVIEW_FILTERS),
        "returned": len(items),
        "ids": [item["id"] for item in items],
        "subject_audit_ids": [item["audit_id"] for item in items],
    }
    return await _audited(request, caller, response, access)


async def _own_item(request: web.Request) -> tuple[Caller, dict[str, Any]]:
    caller = require_admin(request)
    item = await _gateway(request).audit.review_item(request.match_info["id"])
    if item is None or item.get("tenant") != caller.tenant:
        raise _not_found("review item")
    return caller, item


def _item_access(resource: str, item: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"resource": resource, "returned": 1, "ids": [item["id"]], "subject_audit_ids": [item["audit_id"]], **extra}


async def get_review_item(request: web.Request) -> web.Response:
    caller, item = await _own_item(request)
    response = web.json_response(_public_item(item), dumps=_dumps)
    return await _audited(request, caller, response, _item_access("review_item", item))


async def review_item_image(request: web.Request) -> web.Response:
    caller, item = await _own_item(request)
    response = await _asset(request, item.get("asset"), item.get("media_type"))
    access = _item_access("review_item_image", item, image_index=item.get("image_index"), image_sha256=item.get("sha256"))
    return await _audited(request, caller, response, access)


async def decide_review_item(request: web.Request) -> web.Response:
    caller, item = await _own_item(request)
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequestError("The body must be JSON: {\"decision\": \"approve\" | \"reject\", \"note\": \"...\"}.") from exc
    decision = body.get("decision") if isinstance(body, dict) else None
    note = body.get("note", "") if isinstance(body, dict) else ""
    if decision not in ("approve", "reject"):
        raise InvalidRequestError("decision must be approve or reject.", param="decision")
    if not isinstance(note, str) or len(note) > 2000:
        raise InvalidRequestError("note must be a string of at most 2000 characters.", param="note")
    if item["status"] != "pending":
        raise ImagegateError(f"This item was already {item['status']}.", status=409, code="already_decided")
    gateway = _gateway(request)
    record = review_record(item, caller, decision, note, gateway.policy_version)
    try:
        await gateway.audit.append(record)
    except ReviewConflict as exc:
        raise ImagegateError("This item was decided by someone else meanwhile.", status=409, code="already_decided") from exc
    except Exception as exc:
        raise AuditUnavailableError("The review decision could not be recorded in the audit log; nothing was changed.") from exc
    updated = await gateway.audit.review_item(item["id"])
    return web.json_response({"item": _public_item(updated or item), "audit_id": record["id"]}, dumps=_dumps)


async def admin_redirect(request: web.Request) -> web.Response:
    raise web.HTTPFound("/admin/")


async def admin_page(request: web.Request) -> web.Response:
    return _static("index.html")


async def admin_static(request: web.Request) -> web.Response:
    return _static(request.match_info["name"])


def _static(name: str) -> web.Response:
    path = STATIC / name
    if not re.fullmatch(r"[a-z]+\.(html|js|css|svg)", name) or not path.is_file():
        raise _not_found("page")
    return web.Response(body=path.read_bytes(), content_type=_STATIC_TYPES[path.suffix], charset="utf-8", headers=_PAGE_HEADERS)


def _dumps(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, default=str)


__all__ = ["add_admin_routes", "is_redacted", "parse_time", "require_admin"]
