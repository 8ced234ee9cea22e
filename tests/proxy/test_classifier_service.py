"""The classifier as a separate service (`imagegate classifier serve`) that several proxies call.

Real parts throughout: the service is the real aiohttp app around a tiny open_clip model saved as a
checkpoint (random weights, so every verdict must say `uncalibrated`), the proxies are real imagegate
apps with the production chain, the client is the official `openai` SDK. Only the image provider is
a fake.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.app import GATEWAY
from proxy.classifier_service import (
    STATE,
    ClassifierServiceError,
    RemoteClassifier,
    RemoteClassifierSettings,
    ServiceOptions,
    create_classifier_app,
)
from proxy.settings import ConfigError
from proxy.stages.factory import full_stages
from proxy.stages.image_classifier import classifier_service
from tests.classifiers.conftest import TINY_ARCHITECTURE, TinyModels, tiny_models  # noqa: F401  (fixture)
from tests.conftest import TENANT_KEY, free_port, make_settings
from tests.fakes.openai_upstream import make_image

TOKEN = "classifier-test-token"
OTHER_CATEGORIES = ["minors", "violence", "self_harm", "hate", "weapons", "drugs"]


def service_settings(models: TinyModels, *, action: str = "blur", wait_ms: float = 10.0):  # -> ClassifierSettings
    """Only `sexual` is scored and it always fires (offset -10), so its action decides every image."""
    from classifiers.settings import ClassifierSettings

    return ClassifierSettings.model_validate({
        "model": TINY_ARCHITECTURE,
        "pretrained": None,
        "checkpoint": str(models.checkpoint),
        "batch_size": 8,
        "max_batch_wait_ms": wait_ms,
        "actions": {"sexual": action},
        "concepts": {"disabled_categories": OTHER_CATEGORIES, "threshold_offsets": {"sexual": -10.0}},
    })


@pytest.fixture
async def start_service() -> AsyncIterator[Callable[..., Any]]:
    servers: list[TestServer] = []

    async def start(settings: Any, token: str | None = TOKEN, **options: Any) -> tuple[TestServer, str]:
        server = TestServer(create_classifier_app(settings, ServiceOptions(token=token, **options)), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return server, str(server.make_url("")).rstrip("/")

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
def token_env(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("IMAGEGATE_CLASSIFIER_TOKEN", TOKEN)
    return TOKEN


def remote_section(url: str, **extra: Any) -> dict[str, Any]:
    return {"enabled": True, "required": True, "remote": {"url": url, **extra}}


def sdk(base_url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base_url, api_key=TENANT_KEY, max_retries=0)


async def test_two_proxies_share_one_service_that_batches_across_them(
    tmp_path: Path, fake_openai, start_gateway, start_service, upstream_key: str, token_env: str, tiny_models: TinyModels
) -> None:
    # A long batching window makes the cross-proxy batch certain: both images arrive within it.
    service, service_url = await start_service(service_settings(tiny_models, wait_ms=1500.0))
    _, upstream_url = fake_openai
    gateways = [
        await start_gateway(
            make_settings(tmp_path / name, upstream_url, classifier=remote_section(service_url)), stages=full_stages
        )
        for name in ("a", "b")
    ]
    async with sdk(gateways[0][1]) as first, sdk(gateways[1][1]) as second:
        raws = await asyncio.gather(
            first.images.with_raw_response.generate(model="gpt-image-1", prompt="a red square"),
            second.images.with_raw_response.generate(model="gpt-image-1", prompt="a blue square"),
        )
    runner = service.app[STATE].runner
    assert (runner.images_run, runner.batches_run) == (2, 1)  # one batch held both proxies' images
    for (server, _), raw in zip(gateways, raws, strict=True):
        assert raw.headers["X-Imagegate-Blurred"] == "1"  # the service's verdict was applied by the proxy
        assert len(raw.parse().data) == 1
        record = await server.app[GATEWAY].audit.get(raw.headers["X-Imagegate-Audit-Id"])
        [decision] = [d for d in record["decisions"] if d["stage"] == "output_classifier"]
        assert decision["action"] == "blur" and decision["category"] == "sexual"
        assert "UNCALIBRATED" in decision["reason"] and decision["details"]["calibrated"] is False
        assert record["images"][0]["verdict"]["uncalibrated"] is True
        assert record["images"][0]["verdict"]["checkpoint_sha256"]
    # Each proxy exports the outcome of its calls, and its (empty) local queue.
    async with aiohttp.ClientSession() as http:
        text = await (await http.get(gateways[0][1].removesuffix("/v1") + "/metrics")).text()
        service_metrics = await (await http.get(service_url + "/metrics")).text()
    assert 'imagegate_classifier_remote_requests_total{outcome="ok"} 1.0' in text
    assert "imagegate_classifier_queue_depth 0.0" in text
    assert "imagegate_classifier_images_total 2.0" in service_metrics
    assert "imagegate_classifier_batches_total 1.0" in service_metrics


async def test_edit_input_images_are_screened_by_the_service(
    tmp_path: Path, fake_openai, start_gateway, start_service, upstream_key: str, token_env: str, tiny_models: TinyModels
) -> None:
    _, service_url = await start_service(service_settings(tiny_models, action="block"))
    fake, upstream_url = fake_openai
    _, base_url = await start_gateway(
        make_settings(tmp_path, upstream_url, classifier=remote_section(service_url)), stages=full_stages
    )
    async with sdk(base_url) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.images.edit(model="gpt-image-1", image=("a.png", make_image(), "image/png"), prompt="make it blue")
    assert caught.value.code == "content_policy_violation"
    assert fake.received == []  # refused before the upstream


async def test_unreachable_service_fails_closed_and_is_audited(
    tmp_path: Path, fake_openai, start_gateway, upstream_key: str, token_env: str
) -> None:
    _, upstream_url = fake_openai
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    server, base_url = await start_gateway(
        make_settings(tmp_path, upstream_url, classifier=remote_section(url)), stages=full_stages
    )
    async with sdk(base_url) as client:
        with pytest.raises(openai.InternalServerError) as caught:
            await client.images.generate(model="gpt-image-1", prompt="a red square")
    assert caught.value.status_code == 503 and caught.value.code == "moderation_unavailable"
    record = await server.app[GATEWAY].audit.get(caught.value.response.headers["X-Imagegate-Audit-Id"])
    [decision] = [d for d in record["decisions"] if d["stage"] == "output_classifier"]
    assert decision["action"] == "error" and "unreachable" in decision["reason"]
    assert all(not image["released"] for image in record["images"])  # nothing unclassified got out
    async with aiohttp.ClientSession() as http:
        ready = await http.get(base_url.removesuffix("/v1") + "/readyz")
        body = await ready.json()
    assert ready.status == 503 and body["checks"]["output_classifier"] is False


async def test_fail_open_releases_with_an_error_decision(
    tmp_path: Path, fake_openai, start_gateway, upstream_key: str, token_env: str
) -> None:
    _, upstream_url = fake_openai
    url = f"http://127.0.0.1:{free_port()}"
    settings = make_settings(
        tmp_path, upstream_url, classifier=remote_section(url), failure_policy={"output_classifier": "open"}
    )
    server, base_url = await start_gateway(settings, stages=full_stages)
    async with sdk(base_url) as client:
        raw = await client.images.with_raw_response.generate(model="gpt-image-1", prompt="a red square")
    assert len(raw.parse().data) == 1
    record = await server.app[GATEWAY].audit.get(raw.headers["X-Imagegate-Audit-Id"])
    [decision] = [d for d in record["decisions"] if d["stage"] == "output_classifier"]
    assert decision["action"] == "error" and decision["details"]["fail_open"] is True


async def test_a_slow_service_is_cut_off_at_the_timeout(
    tmp_path: Path, fake_openai, start_gateway, upstream_key: str, token_env: str
) -> None:
    release = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({})

    slow_app = web.Application()
    slow_app.router.add_post("/v1/classify", hang)
    slow = TestServer(slow_app, host="127.0.0.1")
    await slow.start_server()
    try:
        _, upstream_url = fake_openai
        remote = remote_section(str(slow.make_url("")).rstrip("/"), timeout_s=0.3)
        server, base_url = await start_gateway(make_settings(tmp_path, upstream_url, classifier=remote), stages=full_stages)
        async with sdk(base_url) as client:
            with pytest.raises(openai.InternalServerError) as caught:
                await client.images.generate(model="gpt-image-1", prompt="a red square")
        record = await server.app[GATEWAY].audit.get(caught.value.response.headers["X-Imagegate-Audit-Id"])
        [decision] = [d for d in record["decisions"] if d["stage"] == "output_classifier"]
        assert "did not answer within 0.3 s" in decision["reason"]
    finally:
        release.set()
        await slow.close()


async def test_wrong_token_is_refused_by_the_service_and_the_proxy_fails_closed(
    tmp_path: Path, fake_openai, start_gateway, start_service, upstream_key: str,
    monkeypatch: pytest.MonkeyPatch, tiny_models: TinyModels,
) -> None:
    service, service_url = await start_service(service_settings(tiny_models))
    monkeypatch.setenv("IMAGEGATE_CLASSIFIER_TOKEN", "not-the-token")
    _, upstream_url = fake_openai
    server, base_url = await start_gateway(
        make_settings(tmp_path, upstream_url, classifier=remote_section(service_url)), stages=full_stages
    )
    async with sdk(base_url) as client:
        with pytest.raises(openai.InternalServerError):
            await client.images.generate(model="gpt-image-1", prompt="a red square")
    assert service.app[STATE].runner.images_run == 0
    async with aiohttp.ClientSession() as http:
        text = await (await http.get(base_url.removesuffix("/v1") + "/metrics")).text()
    assert 'imagegate_classifier_remote_requests_total{outcome="http_error"} 1.0' in text


async def test_service_api_answers_per_image_and_refuses_bad_bodies(start_service, tiny_models: TinyModels) -> None:
    service, url = await start_service(service_settings(tiny_models), max_images=3)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as http:
        form = aiohttp.FormData()
        form.add_field("image", make_image(), filename="0")
        form.add_field("image", b"not an image at all", filename="1")
        response = await http.post(url + "/v1/classify", data=form, headers=auth)
        body = await response.json()
        assert response.status == 200 and body["calibrated"] is False and body["model"]
        assert body["results"][0]["verdict"]["uncalibrated"] is True
        assert body["results"][1]["error"]["type"] == "image_decode_error"

        json_body = await http.post(url + "/v1/classify", json={"image": "x"}, headers=auth)
        assert json_body.status == 400 and (await json_body.json())["error"]["code"] == "invalid_multipart"
        too_many = aiohttp.FormData()
        for index in range(4):
            too_many.add_field("image", make_image(), filename=str(index))
        refused = await http.post(url + "/v1/classify", data=too_many, headers=auth)
        assert refused.status == 400 and "At most 3 images" in (await refused.json())["error"]["message"]
        other = aiohttp.FormData()
        other.add_field("prompt", "hello")
        assert (await http.post(url + "/v1/classify", data=other, headers=auth)).status == 400
        anonymous = aiohttp.FormData()
        anonymous.add_field("image", make_image(), filename="0")
        unauthorised = await http.post(url + "/v1/classify", data=anonymous)
        assert unauthorised.status == 401 and (await unauthorised.json())["error"]["code"] == "invalid_api_key"
        ready = await http.get(url + "/readyz")
        assert ready.status == 200 and (await ready.json())["calibrated"] is False
    assert service.app[STATE].runner.images_run == 2  # refused bodies never reached the model


async def test_client_maps_decode_errors_and_refuses_malformed_answers(start_service, tiny_models: TinyModels) -> None:
    from classifiers.errors import ImageDecodeError
    from classifiers.verdict import ImageVerdict

    _, url = await start_service(service_settings(tiny_models))
    client = RemoteClassifier(RemoteClassifierSettings(url=url), environ={"IMAGEGATE_CLASSIFIER_TOKEN": TOKEN})
    await client.start()
    try:
        verdict, broken = await client.classify([make_image(), b"garbage"])
    finally:
        await client.close()
    assert isinstance(verdict, ImageVerdict) and not verdict.calibrated and verdict.uncalibrated_reasons
    assert isinstance(broken, ImageDecodeError)

    async def wrong(request: web.Request) -> web.Response:
        return web.json_response({"results": []})  # no result for the image sent

    app = web.Application()
    app.router.add_post("/v1/classify", wrong)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    client = RemoteClassifier(RemoteClassifierSettings(url=str(server.make_url("")), token_env=None))
    await client.start()
    try:
        with pytest.raises(ClassifierServiceError, match="malformed answer"):
            await client.classify([make_image()])
    finally:
        await client.close()
        await server.close()


def test_verdict_round_trips_and_a_forged_calibration_does_not() -> None:
    from classifiers.verdict import ImageVerdict
    from policies.decisions import Action

    verdict = ImageVerdict(
        action=Action.FLAG, category="weapons", scores={"weapons": 0.4}, thresholds={"weapons": 0.3},
        method="concepts", model="ViT-B-32/x", checkpoint_sha256="ab", calibrated=False, special_care=False,
        fired=("weapons",), uncalibrated_reasons=("random weights",),
    )
    assert ImageVerdict.from_dict(verdict.to_dict()) == verdict
    forged = verdict.to_dict() | {"calibrated": True}  # still says uncalibrated: stays uncalibrated
    assert ImageVerdict.from_dict(forged).calibrated is False
    with pytest.raises(ValueError):
        ImageVerdict.from_dict(verdict.to_dict() | {"category": "unscored"})


def test_remote_config_rejects_model_keys_and_a_missing_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEGATE_CLASSIFIER_TOKEN", TOKEN)
    with pytest.raises(ConfigError, match="model belong in the classifier service"):
        classifier_service({"remote": {"url": "http://c:8090"}, "model": "ViT-B-32"})
    monkeypatch.delenv("IMAGEGATE_CLASSIFIER_TOKEN")
    with pytest.raises(ConfigError, match="IMAGEGATE_CLASSIFIER_TOKEN"):
        classifier_service({"remote": {"url": "http://c:8090"}})
    service = classifier_service({"remote": {"url": "http://c:8090", "token_env": None}, "required": True})
    assert service.remote is not None and service.settings is None


async def test_cli_serves_until_sigterm(tmp_path: Path, tiny_models: TinyModels) -> None:
    config = tmp_path / "classifier.yaml"
    config.write_text(
        f"server:\n  data_dir: {tmp_path / 'data'}\n"
        f"classifier:\n  checkpoint: {tiny_models.folder}\n  pretrained: null\n"
    )
    port = free_port()
    env = {**os.environ, "IMAGEGATE_CLASSIFIER_TOKEN": TOKEN}
    refused = subprocess.run(
        [sys.executable, "-m", "proxy.cli", "classifier", "serve", "--config", str(config)],
        env={k: v for k, v in env.items() if k != "IMAGEGATE_CLASSIFIER_TOKEN"}, capture_output=True, text=True, timeout=60,
    )
    assert refused.returncode == 2 and "IMAGEGATE_CLASSIFIER_TOKEN is not set" in refused.stderr
    process = subprocess.Popen(
        [sys.executable, "-m", "proxy.cli", "classifier", "serve", "--config", str(config), "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        async with aiohttp.ClientSession() as http:
            while True:
                try:
                    ready = await http.get(url + "/readyz")
                    if ready.status == 200:
                        break
                except aiohttp.ClientError:
                    pass
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                assert time.monotonic() < deadline, "the classifier service did not become ready"
                await asyncio.sleep(0.2)
            client = RemoteClassifier(RemoteClassifierSettings(url=url), environ={"IMAGEGATE_CLASSIFIER_TOKEN": TOKEN})
            await client.start()
            try:
                [verdict] = await client.classify([make_image()])
            finally:
                await client.close()
        assert verdict.model.startswith("local-dir:") and not verdict.calibrated
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
