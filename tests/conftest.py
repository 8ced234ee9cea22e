"""Shared fixtures: settings in a temporary data folder, a fake upstream, imagegate on a real port."""

from __future__ import annotations

import hashlib
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from proxy.settings import Settings
from tests.fakes.openai_upstream import FakeOpenAI


#: How long before 00:00 UTC a test waits for the new day instead of starting (see below).
MIDNIGHT_GUARD_S = 90.0


@pytest.fixture(autouse=True)
def _not_across_utc_midnight() -> None:
    """Start no test in the last `MIDNIGHT_GUARD_S` seconds of a UTC day: wait for the next one.

    Day and month budgets are counted per UTC day (`policies.limits.period_bounds`); a test whose
    requests straddle 00:00 would see two counters and fail for a reason that is not a bug. No
    test that counts budgets takes this long, so each one runs inside a single day. Costs nothing
    the rest of the day.
    """
    left = 86400.0 - time.time() % 86400.0
    if left < MIDNIGHT_GUARD_S:
        time.sleep(left + 1.0)


def free_port() -> int:
    """A loopback TCP port nothing listens on right now (for servers started in a subprocess)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])

TENANT_KEY = "sk-test-tenant-key"
ADMIN_KEY = "sk-test-admin-key"
OTHER_TENANT_KEY = "sk-test-other-tenant"


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def make_settings(tmp_path: Path, upstream_url: str | None = None, **overrides: Any) -> Settings:
    """Settings for a test: tenant `acme` (plus an admin key), tenant `globex`, the demo provider
    serving `demo`, and, when `upstream_url` is given, the fake OpenAI serving the gpt-image models."""
    providers: dict[str, Any] = {"demo": {"kind": "demo", "models": ["demo"]}}
    if upstream_url is not None:
        providers["openai"] = {
            "kind": "openai",
            "base_url": upstream_url,
            "api_key_env": "IMAGEGATE_TEST_UPSTREAM_KEY",
            "models": ["gpt-image-1", "gpt-image-1-mini", "dall-e-3"],
            "timeout_s": 5,
        }
    data: dict[str, Any] = {
        "server": {"data_dir": str(tmp_path / "data")},
        "providers": providers,
        "passthrough_provider": "openai" if upstream_url else None,
        # No CLIP weights here: tests that classify build a tiny model and configure it themselves.
        "classifier": {"enabled": False, "required": False},
        "tenants": {
            "acme": {"api_key_sha256": [digest(TENANT_KEY)], "admin_key_sha256": [digest(ADMIN_KEY)]},
            "globex": {"api_key_sha256": [digest(OTHER_TENANT_KEY)], "audit_prompts": "hash"},
        },
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return Settings.model_validate(data)


@pytest.fixture
def upstream_key(monkeypatch: pytest.MonkeyPatch) -> str:
    key = "sk-upstream-secret-0123456789"
    monkeypatch.setenv("IMAGEGATE_TEST_UPSTREAM_KEY", key)
    return key


@pytest.fixture
async def fake_openai() -> AsyncIterator[tuple[FakeOpenAI, str]]:
    fake = FakeOpenAI()
    server = TestServer(fake.app(), host="127.0.0.1")
    await server.start_server()
    try:
        yield fake, str(server.make_url("/v1"))
    finally:
        await server.close()


@pytest.fixture
async def start_gateway() -> AsyncIterator[Callable[..., Any]]:
    """Start imagegate apps on real loopback ports; returns (server, base_url)."""
    from proxy.app import create_app

    servers: list[TestServer] = []

    async def start(settings: Settings, **kwargs: Any) -> tuple[TestServer, str]:
        server = TestServer(create_app(settings, **kwargs), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return server, str(server.make_url("/v1"))

    yield start
    for server in servers:
        await server.close()
