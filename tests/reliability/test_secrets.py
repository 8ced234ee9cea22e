"""Secrets never appear in logs, errors, audit records or metrics (issue 11, item 5).

imagegate is started with every secret it knows configured for real: the upstream provider key, the
tenants' keys, the URL-signing and webhook secrets of its data folder, the audit checkpoint key and
the C2PA signing key from the environment, the PostgreSQL DSN with its password, and a client's own
webhook secret. Requests that succeed and requests that fail are driven through it (wrong and
missing keys, an upstream that echoes the `Authorization` header it received, a broken upstream,
the pass-through), then every log line (structlog and stdlib logging), every response body and
header, every audit record (read from the store and exported with `imagegate audit export`) and
`/metrics` are searched for each secret and its obvious encodings. Zero hits.

The one deliberate exception is a tenant's own webhook secret, which it reads at
`GET /replicate/v1/webhooks/default/secret` exactly as on Replicate; that single answer is left out
of the search. It is derived from imagegate's master webhook secret, which is searched for like
every other secret.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import logging
import secrets
import sys
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings, strategies as st

from proxy.app import GATEWAY, create_app
from proxy.cli import main as imagegate_cli
from proxy.logs import configure_logging
from proxy.redact import StreamMasker, mask, usable
from proxy.stages.factory import full_stages
from proxy.stores.audit import AuditQuery
from provenance import ensure_dev_credentials
from tests.conftest import make_settings
from tests.fakes.openai_upstream import FakeOpenAI, make_image
from tests.proxy.audit_backends import postgres_dsn

UPSTREAM_KEY_ENV = "IMAGEGATE_TEST_UPSTREAM_KEY"
DSN_ENV = "IMAGEGATE_TEST_SECRET_DSN"


@dataclass
class Secret:
    name: str
    value: bytes
    #: Other spellings that count as the same secret (PEM lines, raw key bytes...).
    extra: list[bytes] = field(default_factory=list)

    def forms(self) -> list[bytes]:
        """The secret and its obvious encodings: base64 (standard and URL-safe), hex, URL-quoted,
        the bearer header form, and a long middle slice (a truncated echo still leaks)."""
        value = self.value
        forms = [value, base64.b64encode(value), base64.urlsafe_b64encode(value), value.hex().encode(),
                 urllib.parse.quote(value, safe="").encode(), b"Bearer " + value, base64.b64encode(b"Bearer " + value)]  # fmt: skip
        if len(value) >= 24:
            middle = len(value) // 2
            forms.append(value[middle - 8 : middle + 8])
        return [form for form in forms + self.extra if len(form) >= 12]


def private_pem_lines(pem: bytes, private: bytes) -> list[bytes]:
    """The base64 lines of a PEM block that carry bytes of the private value (any one of them
    appearing is a leak). Lines holding only the public key are left out: the public key is in the
    certificate every signed image carries, by design."""
    lines = [line for line in pem.splitlines() if line and not line.startswith(b"-----")]
    der = base64.b64decode(b"".join(lines))
    start = der.find(private)
    assert start >= 0, "the private value is not in the PEM"
    width = len(base64.b64decode(lines[0]))
    return [line for index, line in enumerate(lines) if index * width < start + len(private) and (index + 1) * width > start]


def find_leaks(secrets_: Iterable[Secret], haystacks: dict[str, bytes]) -> list[str]:
    leaks = []
    for secret in secrets_:
        for form in secret.forms():
            for where, data in haystacks.items():
                if form in data:
                    leaks.append(f"{secret.name} ({form[:12]!r}...) found in {where}")
    return leaks


@pytest.fixture
def captured_logs(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> Iterable[io.StringIO]:
    """structlog configured as in production (JSON lines, debug level) into a buffer, and every
    stdlib logger captured at DEBUG; both are searched."""
    buffer = io.StringIO()
    monkeypatch.setattr(sys, "stderr", buffer)
    configure_logging("debug", "json")
    monkeypatch.undo()
    structlog.configure(cache_logger_on_first_use=False)
    caplog.set_level(logging.DEBUG)
    yield buffer
    structlog.reset_defaults()


@pytest.fixture(params=["sqlite", "postgres"])
async def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[dict[str, Any]]:
    """The audit section; for PostgreSQL, a DSN carrying a password (trust auth ignores it) and a
    schema of its own, dropped afterwards."""
    if request.param == "sqlite":
        yield {"backend": "sqlite"}
        return
    dsn = await postgres_dsn()
    if dsn is None:
        pytest.skip("no PostgreSQL server answers at 127.0.0.1:5432")
    password = "pg-" + secrets.token_urlsafe(18)
    user = dsn.split("//", 1)[1].split("@", 1)[0]
    monkeypatch.setenv(DSN_ENV, dsn.replace(f"//{user}@", f"//{user}:{password}@"))
    schema = f"secrets_{uuid.uuid4().hex[:12]}"
    yield {"backend": "postgres", "dsn_env": DSN_ENV, "postgres_schema": schema, "password": password}
    import asyncpg

    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await connection.close()


def echoing_upstream(fake: FakeOpenAI, calls: list[str]) -> None:
    """The fake OpenAI answers with what it was sent: the key in its error bodies and headers."""

    async def handler(request: web.Request) -> web.StreamResponse:
        authorization = request.headers.get("Authorization", "")
        calls.append(request.path)
        prompt = ""
        if request.path.endswith("/generations"):
            prompt = str((await request.json()).get("prompt", ""))
        if "echo-4xx" in prompt:
            body = {"error": {"message": f"Incorrect API key provided: {authorization}", "type": "invalid_request_error",
                              "param": None, "code": "invalid_api_key", "debug": {"headers": dict(request.headers)}}}  # fmt: skip
            return web.json_response(body, status=401, headers={"X-Debug-Authorization": authorization})
        if "echo-5xx" in prompt:
            return web.Response(status=500, text=f"upstream crashed handling {authorization}")
        if "garbage" in prompt:
            return web.Response(status=200, text=f"not json {authorization}", content_type="application/json")
        if not request.path.startswith("/v1/images"):  # pass-through: echo everything back
            body = json.dumps({"object": "list", "echo": authorization, "data": []})
            return web.Response(text=body, content_type="application/json", headers={"X-Debug-Authorization": authorization})
        return await fake.images(request)

    fake.handler = handler


async def test_no_secret_appears_in_logs_errors_audit_records_or_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, captured_logs: io.StringIO, caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str], backend: dict[str, Any],
) -> None:  # fmt: skip
    # -- every secret, configured for real ---------------------------------------------------------
    upstream_key = "sk-upstream-" + secrets.token_urlsafe(24)
    tenant_key, admin_key, other_key = ("ig-" + secrets.token_urlsafe(24) for _ in range(3))
    client_webhook_secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    monkeypatch.setenv(UPSTREAM_KEY_ENV, upstream_key)
    checkpoint = Ed25519PrivateKey.generate()
    checkpoint_pem = checkpoint.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    monkeypatch.setenv("IMAGEGATE_AUDIT_CHECKPOINT_KEY", checkpoint_pem.decode())
    credentials = ensure_dev_credentials(tmp_path / "signing")
    signing_key_pem = credentials.private_key_file.read_bytes()
    monkeypatch.setenv("IMAGEGATE_SIGNING_KEY", signing_key_pem.decode())
    monkeypatch.setenv("IMAGEGATE_SIGNING_CERT", credentials.cert_chain_file.read_text())

    fake = FakeOpenAI()
    upstream_calls: list[str] = []
    echoing_upstream(fake, upstream_calls)
    upstream = TestServer(fake.app(), host="127.0.0.1")
    await upstream.start_server()
    password = backend.pop("password", None)
    digest = lambda key: hashlib.sha256(key.encode()).hexdigest()  # noqa: E731
    settings = make_settings(
        tmp_path, str(upstream.make_url("/v1")),
        tenants={"acme": {"api_key_sha256": [digest(tenant_key)], "admin_key_sha256": [digest(admin_key)]},
                 "globex": {"api_key_sha256": [digest(other_key)], "audit_prompts": "hash"}},
        audit={**backend, "checkpoint_every": 3, "purge_interval_s": 0},
    )  # fmt: skip
    server = TestServer(create_app(settings, stages=full_stages), host="127.0.0.1")
    await server.start_server()
    data_dir = settings.server.data_dir
    root = str(server.make_url("")).rstrip("/")

    # -- requests that succeed and requests that fail ------------------------------------------------
    responses: dict[str, bytes] = {}
    released_images: list[bytes] = []
    acme = {"Authorization": f"Bearer {tenant_key}"}

    async def send(label: str, method: str, path: str, **kwargs: Any) -> tuple[int, bytes]:
        async with aiohttp.ClientSession() as session:
            async with session.request(method, root + path, **kwargs) as response:
                body = await response.read()
        headers = "\n".join(f"{key}: {value}" for key, value in response.headers.items())
        responses[f"response {label} ({method} {path})"] = headers.encode() + b"\n\n" + body
        return response.status, body

    status, body = await send("generate", "POST", "/v1/images/generations", json={"prompt": "a lighthouse", "n": 2}, headers=acme)
    assert status == 200, body
    released_images += [base64.b64decode(item["b64_json"]) for item in json.loads(body)["data"]]
    status, body = await send("generate-url", "POST", "/v1/images/generations", json={"prompt": "a harbour", "response_format": "url"}, headers=acme)
    assert status == 200, body
    asset_url = json.loads(body)["data"][0]["url"]
    async with aiohttp.ClientSession() as session:
        async with session.get(asset_url) as response:
            assert response.status == 200
            released_images.append(await response.read())
    form = aiohttp.FormData()
    form.add_field("prompt", "make it blue")
    form.add_field("image", make_image(), filename="in.png", content_type="image/png")
    assert (await send("edit", "POST", "/v1/images/edits", data=form, headers=acme))[0] == 200
    assert (await send("verify", "POST", "/v1/provenance/verify", data=released_images[0], headers={**acme, "Content-Type": "image/png"}))[0] == 200

    # Failures: keys missing, wrong, in the wrong scheme, the upstream's own key presented as a client key.
    for label, headers in {
        "no-key": {},
        "wrong-key": {"Authorization": "Bearer ig-wrong"},
        "basic-scheme": {"Authorization": "Basic " + base64.b64encode(f"acme:{tenant_key}".encode()).decode()},
        "upstream-key-as-client-key": {"Authorization": f"Bearer {upstream_key}"},
    }.items():
        status, _ = await send(label, "POST", "/v1/images/generations", json={"prompt": "a cat"}, headers=headers)
        assert status == 401
    assert (await send("tenant-key-on-admin-route", "GET", "/v1/audit/records", headers=acme))[0] == 403
    # The upstream echoes the Authorization header it received (imagegate's key) in 4xx and 5xx
    # answers and in garbage; the pass-through upstream echoes it in its body and a header.
    status, _ = await send("upstream-4xx-echo", "POST", "/v1/images/generations", json={"prompt": "echo-4xx"}, headers=acme)
    assert status == 401
    assert (await send("upstream-5xx-echo", "POST", "/v1/images/generations", json={"prompt": "echo-5xx"}, headers=acme))[0] == 502
    assert (await send("upstream-garbage", "POST", "/v1/images/generations", json={"prompt": "garbage"}, headers=acme))[0] == 502
    status, body = await send("passthrough-echo", "GET", "/v1/models", headers=acme)
    assert status == 200 and b"*" * 8 in body, body  # the echoed key arrives masked
    assert (await send("passthrough-no-key", "GET", "/v1/models"))[0] == 401
    # A client's own webhook secret (BFL) and the audit and operator endpoints.
    await send("bfl-webhook-secret", "POST", "/bfl/v1/flux-dev", json={"prompt": "a cat", "webhook_url": "https://hooks.example.com/x", "webhook_secret": client_webhook_secret}, headers={"x-key": tenant_key})
    for path in ("/v1/audit/records?limit=100", "/v1/review/items?status=all", "/readyz", "/healthz", "/openapi.json"):
        assert (await send(path, "GET", path, headers={"Authorization": f"Bearer {admin_key}"}))[0] == 200
    async with aiohttp.ClientSession() as session:  # the deliberate exception: not added to `responses`
        async with session.get(root + "/replicate/v1/webhooks/default/secret", headers=acme) as response:
            served_webhook_secret = (await response.json())["key"]
    status, metrics = await send("metrics", "GET", "/metrics")
    assert status == 200

    # -- everything that was written, gathered --------------------------------------------------------
    gateway = server.app[GATEWAY]
    await gateway.jobs.drain()
    records = await gateway.audit.query(AuditQuery(limit=10_000))
    full_records = [await gateway.audit.get(record["id"]) for record in records]
    await server.close()
    await upstream.close()
    config = tmp_path / "imagegate.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    export = tmp_path / "export.jsonl"
    argv = ["audit", "export", "--config", str(config), "--since", "0", "--until", "2999-01-01", "--out", str(export)]
    assert await asyncio.to_thread(imagegate_cli, argv) == 0

    log_text = captured_logs.getvalue()
    assert log_text.count('"event": "exchange"') >= 10, "structlog output was not captured"
    stdio = capfd.readouterr()
    haystacks: dict[str, bytes] = {
        "structlog": log_text.encode(),
        "stdlib logging": "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records).encode(),
        "stdout/stderr": (stdio.out + stdio.err).encode(),
        "audit records (query)": json.dumps(records, default=str).encode(),
        "audit records (get, with chain)": json.dumps(full_records, default=str).encode(),
        "audit export": export.read_bytes(),
        "metrics": metrics,
        **responses,
        **{f"released image {i}": image for i, image in enumerate(released_images)},
    }
    assert len(records) >= 12 and export.read_bytes().count(b"\n") == len(records)

    # -- and searched ---------------------------------------------------------------------------------------
    checkpoint_raw = checkpoint.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    signing_key = serialization.load_pem_private_key(signing_key_pem, None)
    assert isinstance(signing_key, ec.EllipticCurvePrivateKey)
    signing_scalar = signing_key.private_numbers().private_value.to_bytes(32, "big")
    asset_secret = (data_dir / "url-signing.key").read_text().strip()
    webhook_secret = (data_dir / "webhook-signing.key").read_text().strip()
    # A tenant reads its own derived secret, never the master (now searched for everywhere below).
    from proxy.webhooks import derive_tenant_secret

    assert served_webhook_secret == derive_tenant_secret(webhook_secret, "acme") != webhook_secret
    all_secrets = [
        Secret("upstream API key", upstream_key.encode()),
        Secret("tenant key", tenant_key.encode()),
        Secret("tenant admin key", admin_key.encode()),
        Secret("other tenant key", other_key.encode()),
        Secret("asset URL-signing secret", asset_secret.encode(), [bytes.fromhex(asset_secret), base64.b64encode(bytes.fromhex(asset_secret))]),
        Secret("imagegate master webhook secret", webhook_secret.encode(), [webhook_secret.removeprefix("whsec_").encode()]),
        Secret("client webhook secret", client_webhook_secret.encode(), [client_webhook_secret.removeprefix("whsec_").encode()]),
        Secret("audit checkpoint key", checkpoint_raw, private_pem_lines(checkpoint_pem, checkpoint_raw)),
        Secret("C2PA signing key", signing_scalar, private_pem_lines(signing_key_pem, signing_scalar)),
    ]
    if password:
        all_secrets.append(Secret("PostgreSQL password", password.encode()))
    assert upstream_calls, "the upstream was never called"
    assert find_leaks(all_secrets, haystacks) == []


@settings(max_examples=200, derandomize=True, database=None, deadline=None)
@given(
    before=st.binary(max_size=80),
    after=st.binary(max_size=80),
    cuts=st.lists(st.integers(min_value=0, max_value=300), max_size=6),
)
def test_a_key_split_across_streamed_chunks_is_still_masked(before: bytes, after: bytes, cuts: list[int]) -> None:
    """The pass-through masks a streamed answer chunk by chunk: wherever the chunks break, the key
    (and its bearer form) never comes out, and every other byte does, in order."""
    key = b"sk-upstream-0123456789abcdef"
    body = before + b"Bearer " + key + after + key
    secrets_ = usable([key.decode(), "Bearer " + key.decode()])
    masker = StreamMasker(secrets_)
    points = sorted({min(cut, len(body)) for cut in cuts} | {0, len(body)})
    out = b"".join(masker.feed(body[start:end]) for start, end in zip(points, points[1:])) + masker.flush()
    assert out == mask(body, secrets_) and key not in out and len(out) == len(body)
