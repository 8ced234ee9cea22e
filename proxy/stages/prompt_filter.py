"""The prompt stage: screen every text field that reaches the model before a cent is spent.

Decisions come from `policies.prompt_filter` (pure code and the shipped lexicons); one compiled
filter per distinct tenant policy, built once at start-up. A block stops the request with OpenAI's
`content_policy_violation`, whose message names the category but never echoes the offending terms.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from policies.decisions import Action
from policies.prompt_filter import PromptFilter
from policies.prompt_policy import PromptPolicy

from ..errors import ContentPolicyError
from ..exchange import Exchange
from ..pipeline import BaseStage


def build_filters(default: Mapping[str, Any], tenants: Mapping[str, Mapping[str, Any]]) -> tuple[PromptFilter, dict[str, PromptFilter]]:
    """The default filter and one per tenant whose policy differs; identical policies share one."""
    compiled: dict[str, PromptFilter] = {}

    def filter_for(section: Mapping[str, Any]) -> PromptFilter:
        key = json.dumps(section, sort_keys=True, default=str)
        if key not in compiled:
            compiled[key] = PromptFilter(PromptPolicy.model_validate(dict(section)))
        return compiled[key]

    base = filter_for(default)
    per_tenant = {name: filter_for({**default, **section}) for name, section in tenants.items() if section}
    return base, per_tenant


class PromptFilterStage(BaseStage):
    name = "prompt_filter"
    safety = True

    def __init__(self, default: PromptFilter, per_tenant: Mapping[str, PromptFilter]) -> None:
        self.default = default
        self.per_tenant = dict(per_tenant)

    async def on_request(self, exchange: Exchange) -> None:
        assert exchange.request is not None
        tenant = exchange.caller.tenant if exchange.caller else ""
        verdict = self.per_tenant.get(tenant, self.default).check(exchange.request.texts())
        exchange.decide(verdict.to_decision(stage=self.name))
        if verdict.action is Action.BLOCK:
            raise ContentPolicyError(
                f"Your request was rejected by the safety system. {verdict.public_message()}", param="prompt"
            )
        if verdict.action is Action.FLAG:
            exchange.response_headers["X-Imagegate-Flagged"] = "prompt"
