"""The licence stage in the pipeline: blocks before upstream, records the decision everywhere."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from proxy.app import GATEWAY
from proxy.stages.factory import full_stages
from tests.conftest import TENANT_KEY, make_settings


async def test_flux_dev_blocked_for_commercial_tenant_before_upstream(tmp_path: Path, start_gateway) -> None:
    settings = make_settings(tmp_path)
    demo = settings.providers["demo"].model_copy(update={"models": ["demo", "black-forest-labs/flux-dev", "flux-schnell"]})
    settings = settings.model_copy(update={"providers": {"demo": demo}})
    server, base = await start_gateway(settings, stages=full_stages)
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TENANT_KEY}"}) as session:
        async with session.post(base + "/images/generations", json={"model": "black-forest-labs/flux-dev", "prompt": "a fox"}) as response:
            body = await response.json()
            assert response.status == 403
            audit_id = response.headers["X-Imagegate-Audit-Id"]
        async with session.post(base + "/images/generations", json={"model": "flux-schnell", "prompt": "a fox"}) as allowed:
            assert allowed.status == 200
            allowed_id = allowed.headers["X-Imagegate-Audit-Id"]
    assert body["error"]["code"] == "licence_restriction"
    assert "FLUX.1 [dev] Non-Commercial License" in body["error"]["message"]
    record = await server.app[GATEWAY].audit.get(audit_id)
    assert record["outcome"] == "block" and record["licence"]["action"] == "block"
    assert "images" not in record  # nothing was generated
    allowed_record = await server.app[GATEWAY].audit.get(allowed_id)
    assert allowed_record["licence"]["licence_id"] and allowed_record["licence"]["action"] != "block"


async def test_tenant_profile_from_config_unlocks_the_model(tmp_path: Path, start_gateway) -> None:
    settings = make_settings(tmp_path)
    demo = settings.providers["demo"].model_copy(update={"models": ["demo", "black-forest-labs/flux-dev"]})
    acme = settings.tenants["acme"].model_copy(update={"licence_profile": {"commercial_use": False}})
    settings = settings.model_copy(update={"providers": {"demo": demo}, "tenants": {**settings.tenants, "acme": acme}})
    server, base = await start_gateway(settings, stages=full_stages)
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TENANT_KEY}"}) as session:
        async with session.post(base + "/images/generations", json={"model": "black-forest-labs/flux-dev", "prompt": "a fox"}) as response:
            assert response.status == 200
            assert response.headers["X-Imagegate-Licence-Obligations"]
