"""Authenticate the tenant by API key, before anything else is read or spent.

Keys are configured as SHA-256 digests (never in clear); the presented key is hashed and looked up.
An unknown or missing key stops the exchange with a 401 in the provider's shape.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from ..errors import AuthenticationError
from ..exchange import Caller, Exchange
from ..pipeline import BaseStage
from ..settings import TenantSettings


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class Authenticate(BaseStage):
    name = "authenticate"

    def __init__(self, tenants: Mapping[str, TenantSettings]) -> None:
        self._keys: dict[str, tuple[str, bool]] = {}
        for tenant, settings in tenants.items():
            for digest in settings.api_key_sha256:
                self._keys[digest] = (tenant, False)
            for digest in settings.admin_key_sha256:
                self._keys[digest] = (tenant, True)

    def identify(self, credential: str | None) -> Caller:
        """The caller behind `credential`, or `AuthenticationError`."""
        if not credential:
            raise AuthenticationError(
                "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'.",
                code="missing_api_key",
            )
        digest = key_digest(credential)
        found = self._keys.get(digest)
        if found is None:
            raise AuthenticationError("Incorrect API key provided.")
        tenant, is_admin = found
        return Caller(tenant=tenant, key_id=digest[:12], is_admin=is_admin)

    async def on_request(self, exchange: Exchange) -> None:
        caller = self.identify(exchange.credential)
        caller.end_user = exchange.end_user_header
        exchange.caller = caller
