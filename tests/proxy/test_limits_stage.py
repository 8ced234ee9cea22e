"""The limits stage in the gateway: 429s in OpenAI's shape, budgets in money, costs in headers and audit."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web
from multidict import CIMultiDict

from proxy.app import GATEWAY, StageDeps, default_stages
from proxy.pipeline import Stage
from proxy.settings import ConfigError, Settings
from proxy.stages.factory import full_stages, policy_stages
from proxy.stages.limits import LimitsStage, build_limits_stage
from tests.conftest import OTHER_TENANT_KEY, TENANT_KEY, make_settings


def limits_stages(settings: Settings, deps: StageDeps) -> Sequence[Stage]:
    """The bare chain with only the limits stage real (fast: no signing, no classifiers)."""
    stage = build_limits_stage(settings)
    stage.bind_metrics(deps.metrics)
    return [stage if s.name == "limits" else s for s in default_stages(settings, deps)]


def with_limits(settings: Settings, tenant: str = "acme", global_section: dict[str, Any] | None = None, **policy: Any) -> Settings:
    tenants = dict(settings.tenants)
    if policy:
        tenants[tenant] = tenants[tenant].model_copy(update={"limits": policy})
    return settings.model_copy(update={"tenants": tenants, "limits": global_section or {}})


async def post(session: aiohttp.ClientSession, base: str, body: dict[str, Any], key: str = TENANT_KEY, **headers: str) -> tuple[int, CIMultiDict[str], dict[str, Any]]:
    async with session.post(base + "/images/generations", json=body, headers={"Authorization": f"Bearer {key}", **headers}) as response:
        return response.status, CIMultiDict(response.headers), await response.json()


async def test_rate_limit_429_through_the_openai_sdk(tmp_path: Path, start_gateway) -> None:
    settings = with_limits(make_settings(tmp_path), rules=[{"name": "per-user", "scope": "user", "requests": 2, "window": "1h"}])
    _, base = await start_gateway(settings, stages=limits_stages)
    async with openai.AsyncOpenAI(base_url=base, api_key=TENANT_KEY, max_retries=0) as sdk:
        first = await sdk.images.with_raw_response.generate(model="demo", prompt="a kite", user="alice")
        assert first.headers["X-RateLimit-Limit"] == "2" and first.headers["X-RateLimit-Remaining"] == "1"
        assert first.headers["X-RateLimit-Reset"] == "1800"
        assert first.headers["X-Imagegate-Cost-USD"] == "0.000000"  # the demo provider is free
        await sdk.images.generate(model="demo", prompt="a kite", user="alice")
        with pytest.raises(openai.RateLimitError) as refused:
            await sdk.images.generate(model="demo", prompt="a kite", user="alice")
        await sdk.images.generate(model="demo", prompt="a kite", user="bob")  # another user's own counter
    error = refused.value
    assert error.status_code == 429 and error.code == "rate_limit_exceeded"
    assert error.body["type"] == "rate_limit_error" and "per-user" in error.body["message"]
    headers = error.response.headers
    assert headers["X-RateLimit-Remaining"] == "0" and headers["X-RateLimit-Limit"] == "2"
    # A slot comes back every 1800 s, counted from the first request: whole seconds rounded up, so
    # one second less if the three calls took more than a second (a busy machine).
    assert headers["Retry-After"] in ("1800", "1799") and headers["X-RateLimit-Reset"] in ("3600", "3599")
    assert headers["X-Imagegate-Outcome"] == "rejected"


async def test_images_per_window_and_model_rules(tmp_path: Path, start_gateway) -> None:
    settings = with_limits(make_settings(tmp_path), rules=[{"scope": "tenant", "images": 5, "window": "1d", "models": ["demo"]}])
    _, base = await start_gateway(settings, stages=limits_stages)
    async with aiohttp.ClientSession() as session:
        assert (await post(session, base, {"model": "demo", "prompt": "x", "n": 3}))[0] == 200
        status, headers, body = await post(session, base, {"model": "demo", "prompt": "x", "n": 3})
        assert status == 429 and body["error"]["code"] == "rate_limit_exceeded" and headers["X-RateLimit-Remaining"] == "2"
        assert (await post(session, base, {"model": "demo", "prompt": "x", "n": 2}))[0] == 200
        # The other tenant has no limits: the stage says so, and still reports the cost.
        status, headers, _ = await post(session, base, {"model": "demo", "prompt": "x", "n": 3}, key=OTHER_TENANT_KEY)
        assert status == 200 and headers["X-Imagegate-Cost-USD"] == "0.000000" and "X-RateLimit-Limit" not in headers


async def test_budget_stops_a_user_once_the_money_is_spent(tmp_path: Path, fake_openai, start_gateway, upstream_key: str) -> None:
    fake, upstream_url = fake_openai
    settings = with_limits(make_settings(tmp_path, upstream_url), budgets={"user": {"day_usd": 0.03}, "tenant": {"month_usd": 10}})
    server, base = await start_gateway(settings, stages=limits_stages)
    body = {"model": "gpt-image-1", "prompt": "a lamp", "quality": "low", "size": "1024x1024"}
    async with aiohttp.ClientSession() as session:
        status, headers, _ = await post(session, base, body, **{"X-Imagegate-User": "carol"})
        # Held $0.011007 (estimate: image plus prompt tokens), charged $0.01093 from the reported tokens: 10 in, 272 out.
        assert status == 200 and headers["X-Imagegate-Cost-USD"] == "0.010930"
        assert headers["X-Imagegate-Budget-Remaining-USD"] == "0.019070"
        assert headers["X-Imagegate-Budget-Limit-USD"] == "0.030000" and headers["X-Imagegate-Budget-Scope"] == "user/day"
        assert 0 < int(headers["X-Imagegate-Budget-Reset"]) <= 86400
        status, headers, _ = await post(session, base, body, **{"X-Imagegate-User": "carol"})
        assert status == 200 and headers["X-Imagegate-Budget-Remaining-USD"] == "0.008140"
        status, headers, refused = await post(session, base, body, **{"X-Imagegate-User": "carol"})
        assert status == 429 and refused["error"]["code"] == "budget_exceeded"
        assert refused["error"]["type"] == "rate_limit_error" and "daily budget" in refused["error"]["message"]
        assert headers["X-Imagegate-Budget-Remaining-USD"] == "0.008140" and headers["X-Imagegate-Cost-USD"] == "0.000000"
        assert int(headers["Retry-After"]) == int(headers["X-Imagegate-Budget-Reset"])
        cheap = {**body, "model": "demo"}  # a free model still passes the spent budget
        assert (await post(session, base, cheap, **{"X-Imagegate-User": "carol"}))[0] == 200
        assert (await post(session, base, body, **{"X-Imagegate-User": "dave"}))[0] == 200
    assert len(fake.received) == 3
    audit = server.app[GATEWAY].audit
    record = await audit.get(headers["X-Imagegate-Audit-Id"])
    assert record["cost_estimate_usd"] == 0.011007 and record["cost_usd"] == 0.0
    metrics = server.app[GATEWAY].metrics.render().decode()
    assert 'imagegate_cost_usd_total{provider="openai"} 0.03279' in metrics


async def test_failed_upstream_is_refunded_in_full(tmp_path: Path, fake_openai, start_gateway, upstream_key: str) -> None:
    fake, upstream_url = fake_openai

    async def broken(request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": "overloaded", "type": "server_error", "code": None}}, status=500)

    fake.handler = broken
    settings = with_limits(make_settings(tmp_path, upstream_url), budgets={"user": {"day_usd": 1}})
    server, base = await start_gateway(settings, stages=limits_stages)
    async with aiohttp.ClientSession() as session:
        status, headers, _ = await post(session, base, {"model": "gpt-image-1", "prompt": "x", "quality": "high"})
        assert status == 502  # the upstream failed: nothing generated, nothing charged
        assert headers["X-Imagegate-Cost-USD"] == "0.000000" and headers["X-Imagegate-Budget-Remaining-USD"] == "1.000000"
    record = await server.app[GATEWAY].audit.get(headers["X-Imagegate-Audit-Id"])
    assert record["cost_estimate_usd"] == 0.250001 and record["cost_usd"] == 0.0


@pytest.mark.parametrize("mode", ["closed", "open"])
async def test_unreachable_redis_fails_closed_by_default(tmp_path: Path, start_gateway, mode: str) -> None:
    section = {"backend": "redis", "redis_url": "redis://127.0.0.1:1/0", "timeout_s": 0.2, "on_backend_failure": mode}
    settings = with_limits(make_settings(tmp_path), global_section=section, rules=[{"requests": 5}])
    server, base = await start_gateway(settings, stages=limits_stages)
    async with aiohttp.ClientSession() as session:
        status, headers, body = await post(session, base, {"model": "demo", "prompt": "x"})
        async with session.get(base.removesuffix("/v1") + "/readyz") as ready:
            readiness = await ready.json()
    if mode == "closed":
        assert status == 503 and body["error"]["code"] == "limits_unavailable"
        assert "limit store is unreachable" in body["error"]["message"] and headers["Retry-After"] == "5"
        assert readiness["checks"]["limits"] is False
    else:
        assert status == 200 and headers["X-Imagegate-Limits"] == "unchecked"
        assert readiness["checks"]["limits"] is True
    record = await server.app[GATEWAY].audit.get(headers["X-Imagegate-Audit-Id"])
    assert next(d for d in record["decisions"] if d["stage"] == "limits")["action"] == "error"
    metrics = server.app[GATEWAY].metrics.render().decode()
    assert 'imagegate_limit_backend_failures_total{backend="redis",operation="check"} 1.0' in metrics


def test_factory_wires_the_limits_stage_with_metrics(tmp_path: Path) -> None:
    from proxy.app import StageDeps
    from proxy.metrics import Metrics
    from proxy.stages.authenticate import Authenticate

    settings = make_settings(tmp_path)
    deps = StageDeps({}, Authenticate(settings.tenants), Metrics())
    for factory in (policy_stages, full_stages):
        stage = next(s for s in factory(settings, deps) if s.name == "limits")
        assert isinstance(stage, LimitsStage) and stage.metrics is deps.metrics


@pytest.mark.parametrize(
    ("section", "tenant_limits"),
    [({"backend": "etcd"}, {}), ({}, {"rules": [{"scope": "user"}]}), ({"prices": "/nonexistent.yaml"}, {})],
)
def test_invalid_limits_config_is_a_config_error(tmp_path: Path, section: dict, tenant_limits: dict) -> None:
    settings = with_limits(make_settings(tmp_path), global_section=section, **tenant_limits)
    with pytest.raises(ConfigError):
        build_limits_stage(settings)


def test_limits_config_from_yaml(tmp_path: Path) -> None:
    from proxy.settings import load_settings

    config = tmp_path / "imagegate.yaml"
    config.write_text(json.dumps({
        "limits": {"backend": "memory", "defaults": {"rules": [{"scope": "user", "requests": 10, "window": "1m"}]}},
        "tenants": {"acme": {"api_key_sha256": ["0" * 64], "limits": {"budgets": {"tenant": {"day_usd": 50}}}}},
    }))
    stage = build_limits_stage(load_settings(config, environ={}))
    assert stage.policy_for("acme").budgets.tenant.day_usd == 50 and not stage.policy_for("acme").rules
    assert stage.policy_for("other").rules[0].requests == 10
