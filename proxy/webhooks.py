"""Deliver processed job results to the webhook a client registered, signed, without SSRF.

Clients register a webhook with their submit (BFL `webhook_url`, Replicate `webhook`, fal
`fal_webhook`). imagegate never forwards that URL upstream: it keeps it with the job and, once the
job's images are moderated, signed and stored, POSTs the processed result there itself, so a client
can never receive an unmoderated original through its webhook.

Deliveries are signed the Standard Webhooks way (the scheme Replicate uses and its SDK validates):
headers `webhook-id`, `webhook-timestamp` (Unix seconds) and `webhook-signature: v1,<base64
HMAC-SHA256(secret, "{id}.{timestamp}.{body}")>`. The secret is `whsec_` + base64 of the key bytes:
the client's own `webhook_secret` where its API has one (BFL), otherwise the tenant's own secret,
derived from imagegate's master webhook secret (which is never handed out), and readable by that
tenant like Replicate's (`GET /replicate/v1/webhooks/default/secret`). One tenant's secret cannot
sign a delivery that another tenant would accept.

The target URL goes through the same SSRF guard as image fetches: http(s) only, no credentials, no
private, loopback or link-local address (checked after DNS, inside the connector), no redirects
followed. A failed delivery is retried a few times with backoff, then logged; it never changes the
job's stored result.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from aiohttp.abc import AbstractResolver
from yarl import URL

from .fetch import AddressPolicy, GuardedResolver, SafeFetcher, UnsafeURLError, public_only

log = structlog.get_logger("imagegate.webhooks")

SIGNATURE_HEADER = "webhook-signature"
TIMESTAMP_HEADER = "webhook-timestamp"
ID_HEADER = "webhook-id"


def secret_key_bytes(secret: str) -> bytes:
    """The HMAC key of a `whsec_...` secret (any other string is used as UTF-8 bytes)."""
    if secret.startswith("whsec_"):
        return base64.b64decode(secret.removeprefix("whsec_"))
    return secret.encode("utf-8")


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key_bytes(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def verify(secret: str, headers: dict[str, str], body: bytes, *, tolerance_s: int = 300) -> bool:
    """Whether a delivery is genuine and fresh (what a client does on receipt)."""
    lowered = {key.lower(): value for key, value in headers.items()}
    try:
        timestamp = int(lowered[TIMESTAMP_HEADER])
        webhook_id = lowered[ID_HEADER]
        signatures = lowered[SIGNATURE_HEADER].split()
    except (KeyError, ValueError):
        return False
    if abs(time.time() - timestamp) > tolerance_s:
        return False
    expected = sign(secret, webhook_id, timestamp, body)
    return any(hmac.compare_digest(expected, candidate) for candidate in signatures)


def derive_tenant_secret(master: str, tenant: str) -> str:
    """A tenant's own `whsec_...` secret: HMAC-SHA256 of the tenant name under the master key."""
    key = hmac.new(secret_key_bytes(master), b"imagegate-webhook-tenant:" + tenant.encode("utf-8"), hashlib.sha256).digest()
    return "whsec_" + base64.b64encode(key).decode("ascii")


def load_or_create_webhook_secret(path: Path) -> str:
    """imagegate's own webhook secret (`whsec_...`), created once per data folder."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode("ascii")
    path.touch(mode=0o600)
    path.write_text(secret)
    return secret


class WebhookSender:
    def __init__(
        self,
        *,
        policy: AddressPolicy = public_only,
        timeout_s: float = 10.0,
        attempts: int = 3,
        backoff_s: float = 1.0,
        resolver: AbstractResolver | None = None,
    ) -> None:
        self.policy = policy
        self.timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=min(5.0, timeout_s))
        self.attempts = attempts
        self.backoff_s = backoff_s
        self._resolver = resolver
        self._checker = SafeFetcher(policy=policy)
        self._session: aiohttp.ClientSession | None = None
        #: Deliveries made, for tests and metrics: (url, status or error).
        self.deliveries: list[tuple[str, str]] = []

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(resolver=GuardedResolver(self.policy, self._resolver), use_dns_cache=False)
        self._session = aiohttp.ClientSession(connector=connector, timeout=self.timeout)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def check(self, url: str) -> None:
        """Refuse a webhook URL by its form at submit time (scheme, credentials, IP literal)."""
        self._checker.check_url(URL(url))

    async def deliver(self, url: str, payload: dict[str, Any], secret: str) -> bool:
        """POST `payload` signed with `secret`; True once the endpoint answered 2xx."""
        assert self._session is not None, "WebhookSender.start() was not called"
        body = json.dumps(payload, separators=(",", ":")).encode()
        webhook_id = "msg_" + uuid.uuid4().hex
        for attempt in range(self.attempts):
            timestamp = int(time.time())
            headers = {
                "Content-Type": "application/json",
                ID_HEADER: webhook_id,
                TIMESTAMP_HEADER: str(timestamp),
                SIGNATURE_HEADER: sign(secret, webhook_id, timestamp, body),
                "User-Agent": "imagegate-webhooks",
            }
            try:
                self.check(url)
                async with self._session.post(url, data=body, headers=headers, allow_redirects=False) as response:
                    outcome = str(response.status)
                    if 200 <= response.status < 300:
                        self.deliveries.append((url, outcome))
                        return True
            except UnsafeURLError as exc:
                self.deliveries.append((url, f"refused: {exc.message}"))
                log.warning("webhook_refused", reason=exc.message)
                return False
            except aiohttp.ClientConnectorError as exc:
                outcome = f"refused: {exc.os_error}" if "not a public address" in str(exc.os_error) else "connect_error"
                if outcome.startswith("refused"):
                    self.deliveries.append((url, outcome))
                    log.warning("webhook_refused", reason=outcome)
                    return False
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                outcome = type(exc).__name__
            self.deliveries.append((url, outcome))
            log.info("webhook_delivery_failed", attempt=attempt + 1, outcome=outcome)
            if attempt + 1 < self.attempts:
                await asyncio.sleep(self.backoff_s * (2**attempt))
        return False
