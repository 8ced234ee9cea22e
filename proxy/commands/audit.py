"""`imagegate audit verify|purge|query|export`: the audit trail, for auditors and operators.

- `verify` checks the whole hash chain and every signed checkpoint and names the first record that
  breaks it (exit 1); it trusts the configured checkpoint key, plus any `--trust-key` files.
- `purge` applies the retention policy now (`--dry-run` lists what it would do, changing nothing).
- `query` prints matching records as JSON lines or CSV; `export --since --until` prints every
  record in a time range, with its chain data, for an offline copy.

These commands open the store named by the config (`audit.backend`) directly; they never print
secrets, and `verify` never creates a checkpoint key.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from .serve import add_config_arguments, settings_from_args

CSV_COLUMNS = [
    "seq", "id", "time", "tenant", "end_user", "model", "outcome", "status", "operation",
    "decisions", "prompt", "prompt_sha256", "images", "policy_version", "request_id",
]  # fmt: skip


def register(subparsers: Any) -> None:
    audit = subparsers.add_parser("audit", help="verify, purge, query and export the audit trail")
    actions = audit.add_subparsers(dest="audit_command", metavar="ACTION", required=True)

    verify = actions.add_parser("verify", help="check the hash chain and checkpoints; name the first broken record")
    add_config_arguments(verify)
    verify.add_argument("--trust-key", type=Path, action="append", default=[], metavar="FILE",
                        help="also trust checkpoints signed by this Ed25519 key (PEM, or 64 hex digits)")  # fmt: skip
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.set_defaults(func=verify_command)

    purge = actions.add_parser("purge", help="apply the retention policy now")
    add_config_arguments(purge)
    purge.add_argument("--dry-run", action="store_true", help="list what would be redacted or deleted; change nothing")
    purge.add_argument("--json", action="store_true", help="print the report as JSON")
    purge.set_defaults(func=purge_command)

    query = actions.add_parser("query", help="print matching records (JSON lines or CSV)")
    add_config_arguments(query)
    _filters(query)
    query.add_argument("--limit", type=int, default=100, help="most records to print (default 100; 0: all)")
    query.set_defaults(func=query_command)

    export = actions.add_parser("export", help="export every record of a time range, with chain data")
    add_config_arguments(export)
    _filters(export, required_range=True)
    export.add_argument("--out", type=Path, help="write to this file instead of standard output")
    export.set_defaults(func=export_command)


def _filters(parser: argparse.ArgumentParser, required_range: bool = False) -> None:
    parser.add_argument("--since", required=required_range, help="from this time: ISO 8601, epoch seconds or an age (7d)")
    parser.add_argument("--until", required=required_range, help="before this time (same forms)")
    parser.add_argument("--tenant")
    parser.add_argument("--user", help="end user")
    parser.add_argument("--model")
    parser.add_argument("--outcome", help="allow, flag, blur, block, error, rejected, review, retention, "
                        "admin_read (reads of the trail by admins: listed only when asked for)")  # fmt: skip
    parser.add_argument("--decision", help="an action any stage took (flag, block, ...)")
    parser.add_argument("--category", help="a category any decision named")
    parser.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")


def _open(args: argparse.Namespace, *, need_signer: bool = True) -> tuple[Any, Any]:
    from ..stores.audit import open_audit_store

    settings = settings_from_args(args)
    return settings, open_audit_store(settings, with_signer=need_signer)


def _fail(message: str) -> int:
    print(f"imagegate: {message}", file=sys.stderr)
    return 2


def verify_command(args: argparse.Namespace) -> int:
    from ..settings import ConfigError
    from ..stores.audit import AuditWriteError, trusted_public_keys

    try:
        settings, store = _open(args, need_signer=False)
        trusted = trusted_public_keys(settings, args.trust_key)
    except (ConfigError, OSError, ValueError) as exc:
        return _fail(str(exc))

    async def run() -> Any:
        await store.start()
        try:
            return await store.verify(trusted_keys=trusted or None)
        finally:
            await store.close()

    try:
        report = asyncio.run(run())
    except AuditWriteError as exc:
        return _fail(str(exc))
    if args.json:
        print(json.dumps({**report.to_dict(), "trusted_keys": len(trusted)}))
    else:
        if not trusted:
            print("warning: no checkpoint key is configured here; signatures were checked against the keys the checkpoints name")
        span = f"seq {report.first_seq}..{report.last_seq}" if report.first_seq is not None else "empty log"
        print(
            f"{report.records} records ({span}), {report.tombstones} deleted, {report.redacted_fields} redacted fields, "
            f"{report.checkpoints} signed checkpoints; head {report.head_hash[:16]}"
        )
        if report.first_break is not None:
            print(f"BROKEN: first break at {report.first_break}")
        for problem in report.problems:
            print(f"PROBLEM: {problem}")
        if report.ok:
            print("OK: the chain verifies")
    return 0 if report.ok else 1


def purge_command(args: argparse.Namespace) -> int:
    from ..settings import ConfigError
    from ..stores.audit_retention import purge

    from ..stores.assets import open_asset_store

    try:
        settings, store = _open(args, need_signer=not args.dry_run)
        assets = open_asset_store(settings.assets, settings.server.data_dir)
    except (ConfigError, OSError, ValueError, RuntimeError) as exc:
        return _fail(str(exc))

    async def run() -> Any:
        await store.start()
        try:
            return await purge(
                store,
                settings.audit.retention,
                assets=assets,
                signer=store.signer,
                dry_run=args.dry_run,
                policy_version=settings.policy_version(),
            )
        finally:
            await store.close()
            await assets.close()

    report = asyncio.run(run())
    if args.json:
        print(json.dumps({**report.to_dict(), "actions": report.actions if args.dry_run else []}))
        return 0
    if args.dry_run:
        for audit_id, action in report.actions:
            print(f"would {action}: {audit_id}")
    verb = "would be" if args.dry_run else "were"
    redacted = ", ".join(f"{name} in {count}" for name, count in sorted(report.redacted.items())) or "none"
    print(
        f"examined {report.examined} records: {report.deleted} {verb} deleted, redacted fields: {redacted}; "
        f"{report.held} held by legal holds; {report.images_removed} stored images removed; "
        f"{report.compacted} deleted records compacted"
    )
    return 0


def _query_from(args: argparse.Namespace, **overrides: Any) -> Any:
    from ..admin.routes import parse_time
    from ..errors import InvalidRequestError
    from ..stores.audit import AuditQuery

    try:
        since, until = parse_time(args.since, "since"), parse_time(args.until, "until")
    except InvalidRequestError as exc:
        raise ValueError(exc.message) from exc
    return AuditQuery(
        tenant=args.tenant, end_user=args.user, model=args.model, outcome=args.outcome,
        decision=args.decision, category=args.category, since=since, until=until, **overrides,
    )  # fmt: skip


def _iso(ts: Any) -> str:
    return datetime.fromtimestamp(float(ts), tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _cell(value: Any) -> str:
    from ..stores.audit_chain import is_redacted

    if value is None:
        return ""
    if is_redacted(value):
        return "[redacted]"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return str(value)


def csv_row(record: dict[str, Any]) -> list[str]:
    decisions = record.get("decisions")
    images = record.get("images")
    row = dict(record)
    row["time"] = _iso(record["time"]) if isinstance(record.get("time"), (int, float)) else record.get("time")
    if isinstance(decisions, list):
        row["decisions"] = "; ".join(
            ":".join(str(d.get(k)) for k in ("stage", "action", "category") if d.get(k) is not None) for d in decisions
        )
    if isinstance(images, list):
        row["images"] = " ".join(str(image.get("sha256")) for image in images if isinstance(image, dict))
    return [_cell(row.get(column)) for column in CSV_COLUMNS]


async def _stream(store: Any, query: Any, limit: int, out: TextIO, fmt: str, with_chain: bool) -> int:
    writer = csv.writer(out) if fmt == "csv" else None
    if writer is not None:
        writer.writerow(CSV_COLUMNS)
    written, after = 0, 0
    from dataclasses import replace

    while limit == 0 or written < limit:
        page = 500 if limit == 0 else min(500, limit - written)
        records = await store.query(replace(query, after_seq=after, limit=page))
        if not records:
            break
        for record in records:
            if with_chain:
                full = await store.get(record["id"])
                record["chain"] = full.get("chain") if full else None
            if writer is not None:
                writer.writerow(csv_row(record))
            else:
                out.write(json.dumps(record, ensure_ascii=False, sort_keys=True, default=str) + "\n")
            written += 1
        after = records[-1]["seq"]
    return written


def _listing(args: argparse.Namespace, limit: int, with_chain: bool) -> int:
    from ..settings import ConfigError

    try:
        query = _query_from(args)
        _, store = _open(args, need_signer=False)
    except (ConfigError, OSError, ValueError) as exc:
        return _fail(str(exc))
    out: TextIO = open(args.out, "w", encoding="utf-8", newline="") if getattr(args, "out", None) else sys.stdout

    async def run() -> int:
        await store.start()
        try:
            return await _stream(store, query, limit, out, args.format, with_chain)
        finally:
            await store.close()

    try:
        written = asyncio.run(run())
    finally:
        if out is not sys.stdout:
            out.close()
    if out is not sys.stdout:
        print(f"exported {written} records to {args.out}", file=sys.stderr)
    return 0


def query_command(args: argparse.Namespace) -> int:
    return _listing(args, max(0, args.limit), with_chain=False)


def export_command(args: argparse.Namespace) -> int:
    return _listing(args, 0, with_chain=True)
