"""`imagegate licenses check|list`: let compliance staff see what each tenant may use, and why.

`check --model ID` prints the licence decision for one model and one tenant (exit 0 when allowed,
1 when blocked, 2 on a usage or configuration error); `list` prints, for each tenant, every model in
the licence table with its verdict and the clause behind it. Tenants come from the `tenants:` mapping
of a YAML config file (`--config`); each tenant may carry a `licence_profile:` section, parsed by
`policies.licences.TenantLicenceProfile`. Without `--config` a single built-in tenant, `default`,
with the default profile (commercial use, nothing else declared) is used.

This command only reads files and prints; it must never contact a provider or change any state, and
it never prints a held licence's reference except in `--json` output, which is the audit form.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from policies.licences import LicenceDecision, LicenceOutcome, LicenceTable, TenantLicenceProfile, decide_licence

DEFAULT_TENANT = "default"
EXIT_ALLOWED = 0
EXIT_BLOCKED = 1
EXIT_USAGE = 2

_VERDICT_WORDS = {
    LicenceOutcome.ALLOW: "allowed",
    LicenceOutcome.ALLOW_WITH_OBLIGATIONS: "allowed, with obligations",
    LicenceOutcome.BLOCK: "BLOCKED",
}


class ConfigError(Exception):
    """The config file or a tenant's licence profile cannot be used."""


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "licenses",
        help="check model licences against tenant licence profiles",
        description="Check which image models each tenant may use under their licences, and why.",
    )
    commands = parser.add_subparsers(dest="licenses_command", metavar="SUBCOMMAND", required=True)

    check = commands.add_parser("check", help="decide one model for one tenant")
    check.add_argument("--model", required=True, help="model id as the client sends it")
    check.add_argument("--provider", help="provider serving the model (bfl, replicate, fal, ...)")
    check.add_argument("--use-case", help="use case name, for the tenant's per-use-case overrides")
    _common_arguments(check)
    check.add_argument("--json", action="store_true", help="print the decision as JSON (the audit form)")
    check.set_defaults(func=run_check)

    listing = commands.add_parser("list", help="list every model in the table with each tenant's verdict")
    _common_arguments(listing)
    listing.add_argument("--json", action="store_true", help="print the verdicts as JSON")
    listing.set_defaults(func=run_list)


def _common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tenant", help="tenant name from the config (default: all tenants for list)")
    parser.add_argument("--config", type=Path, help="YAML config file with a tenants: mapping")
    parser.add_argument("--table", type=Path, help="licence table YAML (default: the shipped table)")
    parser.add_argument("--date", type=date.fromisoformat, help="decide as of this day (YYYY-MM-DD)")


def load_tenant_profiles(config: Path | None) -> dict[str, TenantLicenceProfile]:
    """Tenant name -> licence profile, from a config's `tenants:` mapping (or the built-in default)."""
    if config is None:
        return {DEFAULT_TENANT: TenantLicenceProfile()}
    try:
        data = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"cannot read {config}: {error}") from error
    tenants = data.get("tenants") if isinstance(data, dict) else None
    if not isinstance(tenants, dict) or not tenants:
        raise ConfigError(f"{config} has no tenants: mapping")
    profiles: dict[str, TenantLicenceProfile] = {}
    for name, tenant in tenants.items():
        section = (tenant or {}).get("licence_profile") if isinstance(tenant, dict) else None
        try:
            profiles[str(name)] = TenantLicenceProfile.model_validate(section or {})
        except ValidationError as error:
            raise ConfigError(f"tenant {name!r} in {config}: invalid licence_profile:\n{error}") from error
    return profiles


def _prepare(args: argparse.Namespace) -> tuple[LicenceTable, dict[str, TenantLicenceProfile]]:
    table = LicenceTable.load(args.table)
    profiles = load_tenant_profiles(args.config)
    if args.tenant is not None:
        if args.tenant not in profiles:
            known = ", ".join(sorted(profiles))
            raise ConfigError(f"unknown tenant {args.tenant!r} (known: {known})")
        profiles = {args.tenant: profiles[args.tenant]}
    return table, profiles


def run_check(args: argparse.Namespace) -> int:
    try:
        table, profiles = _prepare(args)
    except (ConfigError, ValueError, OSError) as error:
        print(f"imagegate licenses: {error}", file=sys.stderr)
        return EXIT_USAGE
    if len(profiles) > 1:
        print("imagegate licenses check: the config has several tenants; name one with --tenant", file=sys.stderr)
        return EXIT_USAGE
    [(tenant, profile)] = profiles.items()
    decision = decide_licence(table, profile, args.model, args.provider, args.use_case, args.date)
    if args.json:
        print(json.dumps({"tenant": tenant, **decision.to_dict()}, indent=2, ensure_ascii=False))
    else:
        _print_decision(tenant, decision)
    return EXIT_BLOCKED if decision.action is LicenceOutcome.BLOCK else EXIT_ALLOWED


def _print_decision(tenant: str, decision: LicenceDecision) -> None:
    print(f"tenant:    {tenant}")
    print(f"model:     {decision.model_id}" + (f" (via {decision.provider})" if decision.provider else ""))
    if decision.resolved_entry is not None:
        print(f"licence:   {decision.licence_name}, {decision.licence_version}")
        print(f"source:    {decision.source_url}")
    print(f"clause:    {decision.clause}")
    print(f"verdict:   {_VERDICT_WORDS[decision.action]}")
    print(f"why:       {decision.explanation}")
    for obligation in decision.obligations:
        print(f"  - {obligation}")
    for notice in decision.notices:
        print(f"  note: {notice}")
    print(f"table:     version {decision.table_version}, fingerprint {decision.table_fingerprint[:16]}")


def run_list(args: argparse.Namespace) -> int:
    try:
        table, profiles = _prepare(args)
    except (ConfigError, ValueError, OSError) as error:
        print(f"imagegate licenses: {error}", file=sys.stderr)
        return EXIT_USAGE
    rows: dict[str, list[dict[str, Any]]] = {}
    for tenant, profile in profiles.items():
        rows[tenant] = []
        for entry in table.entries.values():
            decision = decide_licence(table, profile, entry.id, today=args.date)
            rows[tenant].append(
                {
                    "model": entry.id,
                    "name": entry.name,
                    "licence": decision.licence_name,
                    "verdict": decision.action.value,
                    "clause": decision.clause,
                    "obligations": len(decision.obligations),
                    "explanation": decision.explanation,
                }
            )
    if args.json:
        payload = {"table_version": table.version, "table_fingerprint": table.fingerprint, "tenants": rows}
        print(json.dumps(payload, indent=2, ensure_ascii=False))
        return EXIT_ALLOWED
    print(f"licence table version {table.version}, fingerprint {table.fingerprint[:16]}")
    for tenant, tenant_rows in rows.items():
        print(f"\ntenant {tenant}")
        width = max(len(row["name"]) for row in tenant_rows)
        for row in tenant_rows:
            verdict = _VERDICT_WORDS[LicenceOutcome(row["verdict"])]
            print(f"  {row['name']:<{width}}  {verdict:<26} {row['licence']}, {row['clause']}")
    return EXIT_ALLOWED
