"""The licence stage: may this tenant use this model's output, and on what terms?

Decisions come from `policies.licences` (pure code and the shipped licence table); this stage picks
the tenant's profile, applies the decision, and records it on the exchange so that the audit record
and every image's C2PA manifest carry it. A block stops the request before any money is spent.
The use case may be named per request with the `X-Imagegate-Use-Case` header.
"""

from __future__ import annotations

from collections.abc import Mapping

from policies.licences import LicenceOutcome, LicenceTable, TenantLicenceProfile, decide_licence

from ..errors import LicenceError
from ..exchange import Exchange
from ..pipeline import BaseStage


class LicenceStage(BaseStage):
    name = "licence"

    def __init__(
        self,
        table: LicenceTable,
        profiles: Mapping[str, TenantLicenceProfile],
        provider_kinds: Mapping[str, str],
    ) -> None:
        self.table = table
        self.profiles = dict(profiles)
        self.provider_kinds = dict(provider_kinds)
        self.default_profile = TenantLicenceProfile()

    async def on_request(self, exchange: Exchange) -> None:
        assert exchange.request is not None and exchange.caller is not None
        profile = self.profiles.get(exchange.caller.tenant, self.default_profile)
        provider_kind = self.provider_kinds.get(exchange.provider or "", exchange.provider)
        decision = decide_licence(
            self.table,
            profile,
            exchange.request.model,
            provider=provider_kind,
            use_case=exchange.notes.get("use_case"),
        )
        exchange.licence = decision.to_dict()
        exchange.decide(decision.to_decision())
        if decision.action is LicenceOutcome.BLOCK:
            raise LicenceError(decision.explanation, param="model")
        if decision.obligations:
            exchange.response_headers["X-Imagegate-Licence-Obligations"] = "; ".join(decision.obligations)[:1024]
