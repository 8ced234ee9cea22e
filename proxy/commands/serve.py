"""`imagegate serve`: run the gateway.

With no config file (or with `--demo`) it runs the embedded default: the demo provider, a SQLite
audit log under `./imagegate-data/`, in-memory limits and a development signing certificate. When
no tenant is configured, a development tenant `dev` is created whose key comes from
`IMAGEGATE_DEV_KEY`, or is generated and printed once.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..settings import ConfigError, Settings, TenantSettings, load_settings

DEV_TENANT = "dev"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("serve", help="run the gateway", description=__doc__)
    add_config_arguments(parser)
    parser.add_argument("--host", help="address to listen on (default from config: 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default from config: 8080)")
    parser.set_defaults(func=run)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, default=None, help="YAML config file (default: $IMAGEGATE_CONFIG, else the embedded default)"
    )
    parser.add_argument("--demo", action="store_true", help="run the embedded default even if a config exists")


def settings_from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Settings:
    environ = os.environ if environ is None else environ
    path = args.config or (Path(environ["IMAGEGATE_CONFIG"]) if environ.get("IMAGEGATE_CONFIG") else None)
    return load_settings(path, environ=environ, demo=args.demo)


def with_dev_tenant(settings: Settings, environ: Mapping[str, str] | None = None) -> tuple[Settings, str | None, bool]:
    """Add the development tenant when no tenant is configured.

    Returns the settings, the dev key (None when tenants are configured) and whether it was generated.
    """
    if settings.tenants:
        return settings, None, False
    from ..stages.authenticate import key_digest

    environ = os.environ if environ is None else environ
    key = environ.get("IMAGEGATE_DEV_KEY")
    generated = not key
    if not key:
        key = "ig-dev-" + secrets.token_urlsafe(24)
    digest = key_digest(key)
    tenant = TenantSettings(api_key_sha256=[digest], admin_key_sha256=[digest])
    return settings.model_copy(update={"tenants": {DEV_TENANT: tenant}}), key, generated


def run(args: argparse.Namespace) -> int:
    from aiohttp import web

    from ..app import create_app
    from ..logs import configure_logging
    from ..stages.factory import full_stages

    try:
        settings = settings_from_args(args)
    except ConfigError as exc:
        print(f"imagegate: {exc}", file=sys.stderr)
        return 2
    server = settings.server.model_copy(
        update={key: value for key, value in (("host", args.host), ("port", args.port)) if value is not None}
    )
    settings = settings.model_copy(update={"server": server})
    configure_logging(settings.server.log_level, settings.server.log_format)
    settings, dev_key, generated = with_dev_tenant(settings)
    if dev_key is not None and generated:
        print(
            f"imagegate: development API key (shown once; set IMAGEGATE_DEV_KEY to choose it): {dev_key}",
            flush=True,
        )
    try:
        app = create_app(settings, stages=full_stages)
    except ConfigError as exc:
        print(f"imagegate: {exc}", file=sys.stderr)
        return 2
    print(f"imagegate: listening on http://{settings.server.host}:{settings.server.port}/v1", flush=True)
    web.run_app(
        app,
        host=settings.server.host,
        port=settings.server.port,
        print=None,
        access_log=None,
        shutdown_timeout=30.0,
        handler_cancellation=False,
    )
    return 0
