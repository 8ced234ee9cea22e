"""fal's queue API through imagegate with the official `fal-client` SDK.

fal-client always speaks https and reads its hosts once, at import, from `FAL_RUN_HOST` and
`FAL_QUEUE_RUN_HOST` (`https://{host}/` becomes `RUN_URL_FORMAT` / `QUEUE_URL_FORMAT`). So imagegate
runs here behind TLS with a throw-away CA that the SDK trusts through `SSL_CERT_FILE`. One test
starts a fresh interpreter with only those environment variables set, exactly as a user would; the
others set the two module constants to the value those variables produce, so that the SDK can be
used in-process. The production chain runs (prompt filter, licences, limits, C2PA signing); the
upstream is the fake fal queue API, its images served from a fake CDN.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import json
import ssl
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import fal_client
import fal_client.client as fal_module
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from yarl import URL

from proxy import webhooks
from proxy.app import GATEWAY, create_app
from proxy.settings import Settings
from provenance import verify_image
from tests.conftest import OTHER_TENANT_KEY, TENANT_KEY
from tests.fakes.fal import FakeFal
from tests.fakes.openai_upstream import make_image
from tests.fakes.provider_harness import Counters, count_audits, counting_full_stages, only_loopback, provider_settings, serve

DEV = "fal-ai/flux/dev"
SCHNELL = "fal-ai/flux/schnell"
MODELS = [DEV, SCHNELL, "fal-ai/flux-pro/v1.1", "fal-ai/stable-diffusion-v35-large"]
BLOCKED = "a n.u.d.3 photo of a schoolgirl"


# -- a throw-away CA and a certificate for 127.0.0.1 ------------------------------------------------


def _certificate(subject: str, key: Any, issuer: x509.Name, issuer_key: Any, *, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    )
    if ca:
        builder = builder.add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
    else:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("fal-tls")
    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "imagegate test CA")])
    ca = _certificate("imagegate test CA", ca_key, ca_name, ca_key, ca=True)
    leaf = _certificate("127.0.0.1", leaf_key, ca_name, ca_key, ca=False)
    pem = serialization.Encoding.PEM
    (folder / "ca.pem").write_bytes(ca.public_bytes(pem))
    (folder / "leaf.pem").write_bytes(leaf.public_bytes(pem))
    (folder / "leaf.key").write_bytes(leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(folder / "leaf.pem", folder / "leaf.key")
    return {"ca_file": str(folder / "ca.pem"), "server": server, "client": ssl.create_default_context(cafile=str(folder / "ca.pem"))}


# -- the gateway -----------------------------------------------------------------------------------


async def start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tls: dict[str, Any], acme: dict[str, Any] | None = None
) -> AsyncIterator[dict[str, Any]]:
    """imagegate behind TLS in front of the fake fal; tenant `acme` is a non-commercial user (FLUX.1
    [dev]'s licence allows it that), `globex` a commercial one; `acme` adds to acme's section."""
    fake = FakeFal()
    monkeypatch.setenv("IMAGEGATE_TEST_PROVIDER_KEY", fake.key)
    upstream, upstream_url = await serve(fake.app())
    data = provider_settings(tmp_path, "fal", "fal", upstream_url, MODELS).model_dump(mode="json")
    data["tenants"]["acme"].update(licence_profile={"commercial_use": False}, **(acme or {}))
    settings = Settings.model_validate(data)
    counters, calls = Counters(), Counter[str]()
    app = create_app(settings, stages=counting_full_stages(calls))
    app[GATEWAY].jobs.webhooks = webhooks.WebhookSender(policy=only_loopback, backoff_s=0.01)  # loopback admitted explicitly
    count_audits(app, counters)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server(ssl=tls["server"])
    root = str(server.make_url("")).rstrip("/")
    host = root.removeprefix("https://")
    # What FAL_QUEUE_RUN_HOST / FAL_RUN_HOST set to imagegate make of the SDK's two constants.
    monkeypatch.setattr(fal_module, "QUEUE_URL_FORMAT", f"https://{host}/fal/queue/")
    monkeypatch.setattr(fal_module, "RUN_URL_FORMAT", f"https://{host}/fal/run/")
    monkeypatch.setenv("SSL_CERT_FILE", tls["ca_file"])
    try:
        yield {"fake": fake, "counters": counters, "calls": calls, "app": app, "root": root, "host": host,
               "trust": (tmp_path / "data" / "dev-keys" / "dev-root-ca.pem")}
    finally:
        await server.close()
        await upstream.close()


@pytest.fixture
async def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tls: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    async for value in start(tmp_path, monkeypatch, tls):
        yield value


def sdk(key: str = TENANT_KEY) -> fal_client.AsyncClient:
    return fal_client.AsyncClient(key=key)


async def fetch(url: str, tls: dict[str, Any]) -> bytes:
    async with aiohttp.ClientSession() as http:
        async with http.get(url, ssl=tls["client"]) as response:
            assert response.status == 200, await response.text()
            return await response.read()


async def assert_imagegate_copies(result: dict[str, Any], env: dict[str, Any], tls: dict[str, Any]) -> str:
    """Every image URL is imagegate's signed asset URL, and the image behind it carries our manifest."""
    [record] = [record for record in env["counters"].audits if record["status"] == 200]
    for image in result["images"]:
        url = URL(image["url"])
        assert url.host == "127.0.0.1" and url.path.startswith("/v1/assets/") and "signature" in url.query
        assert "/files/" not in image["url"]  # never the provider's CDN
        report = verify_image(await fetch(image["url"], tls), trust_anchors_pem=env["trust"].read_text())
        assert report.state == "trusted", report.failures
        assert report.imagegate["audit_id"] == record["id"]
    return record["id"]


# -- tests -----------------------------------------------------------------------------------------


async def test_subscribe_gets_signed_imagegate_copies_audited_and_priced(env, tls) -> None:
    updates: list[Any] = []
    result = await sdk().subscribe(
        DEV, arguments={"prompt": "a cat holding a fish", "image_size": "landscape_4_3", "num_images": 2, "seed": 7},
        with_logs=True, on_queue_update=updates.append,
    )
    assert len(result["images"]) == 2 and result["seed"] == 1234 and result["has_nsfw_concepts"] == [False, False]
    assert result["images"][0]["width"] == 1024 and result["images"][0]["height"] == 768
    await assert_imagegate_copies(result, env, tls)
    assert isinstance(updates[-1], fal_client.Completed)
    fake = env["fake"]
    sent = fake.submitted[0]
    assert sent["model"] == DEV and sent["headers"]["Authorization"] == f"Key {fake.key}"
    assert sent["body"] == {"prompt": "a cat holding a fish", "num_images": 2, "image_size": "landscape_4_3", "output_format": "jpeg", "seed": 7}
    await env["app"][GATEWAY].jobs.drain()
    [record] = env["counters"].audits
    assert record["provider"] == "fal" and record["model"] == DEV and record["status"] == 200
    # fal-ai/flux/dev: $0.025 per megapixel, 1024x768 rounds up to one megapixel, two images.
    assert record["cost_estimate_usd"] == pytest.approx(0.05) and record["cost_usd"] == pytest.approx(0.05)
    assert record["licence"] is not None and record["licence"]["resolved_entry"] == "flux-1-dev"
    assert env["calls"] == Counter({"output_classifier": 1, "provenance": 1}) and fake.served == 2


async def test_a_job_polled_many_times_is_processed_exactly_once(env, tls) -> None:
    client = sdk()
    env["fake"].pending_polls = 4
    handle = await client.submit(SCHNELL, arguments={"prompt": "a harbour at night"})
    assert URL(handle.status_url).path == f"/fal/queue/fal-ai/flux/requests/{handle.request_id}/status"
    statuses = await asyncio.gather(*(handle.status(with_logs=True) for _ in range(6)))
    statuses += await asyncio.gather(*(client.status(SCHNELL, handle.request_id) for _ in range(6)))
    assert {type(status).__name__ for status in statuses} <= {"InProgress", "Completed"}
    results = [await handle.get()]
    results += await asyncio.gather(*(client.result(SCHNELL, handle.request_id) for _ in range(8)))
    for _ in range(5):
        results.append(await handle.get())
    assert isinstance(await handle.status(), fal_client.Completed)
    names = {URL(result["images"][0]["url"]).path for result in results}
    assert len(names) == 1  # the same stored copy every time
    await assert_imagegate_copies(results[-1], env, tls)
    await env["app"][GATEWAY].jobs.drain()
    assert env["calls"] == Counter({"output_classifier": 1, "provenance": 1})
    assert len(env["counters"].audits) == 1
    assert env["fake"].results_read == 1 and env["fake"].served == 1
    assert env["counters"].audits[0]["cost_usd"] == pytest.approx(0.003)  # schnell, $0.003 per megapixel


async def test_licence_rules_apply_to_fal_model_ids(env) -> None:
    """FLUX.1 [dev] on fal is under its non-commercial licence; [schnell] is Apache-2.0."""
    commercial = sdk(OTHER_TENANT_KEY)
    with pytest.raises(fal_client.client.FalClientHTTPError) as caught:
        await commercial.run(DEV, arguments={"prompt": "a product photo"})
    assert caught.value.status_code == 403 and "Non-Commercial" in str(caught.value)
    assert env["fake"].submitted == []
    await commercial.run(SCHNELL, arguments={"prompt": "a product photo"})
    await commercial.run("fal-ai/flux-pro/v1.1", arguments={"prompt": "a product photo"})
    refused, schnell, pro = env["counters"].audits
    assert refused["outcome"] == "block" and refused["licence"]["resolved_entry"] == "flux-1-dev"
    assert schnell["licence"]["resolved_entry"] == "flux-1-schnell" and schnell["status"] == 200
    assert pro["licence"]["resolved_entry"] == "bfl-flux-hosted" and pro["cost_usd"] == pytest.approx(0.04)


async def test_sync_run_endpoint(env, tls) -> None:
    result = await sdk().run(SCHNELL, arguments={"prompt": "a lighthouse", "image_size": {"width": 1280, "height": 1024}})
    await assert_imagegate_copies(result, env, tls)
    assert env["fake"].submitted[0]["body"]["image_size"] == {"width": 1280, "height": 1024}
    assert env["counters"].audits[0]["cost_usd"] == pytest.approx(0.006)  # 1280x1024 is two billed megapixels


async def test_blocked_prompt_is_refused_at_submit_and_never_sent(env) -> None:
    with pytest.raises(fal_client.client.FalClientHTTPError) as caught:
        await sdk().subscribe(DEV, arguments={"prompt": BLOCKED})
    assert caught.value.status_code == 422
    [detail] = json.loads(caught.value.response.text)["detail"]
    assert detail["type"] == "content_policy_violation" and detail["loc"] == ["body", "prompt"]
    assert "schoolgirl" not in detail["msg"]
    assert env["fake"].submitted == []
    [record] = env["counters"].audits
    assert record["outcome"] == "block" and not record["cost_usd"]


async def test_provider_refusal_and_failures_reach_the_client_in_fal_shape(env) -> None:
    fake, client = env["fake"], sdk()
    fake.error_type = "content_policy_violation"  # fal's own checker refused it
    handle = await client.submit(DEV, arguments={"prompt": "a quiet street"})
    with pytest.raises(fal_client.client.FalClientHTTPError) as caught:
        await handle.get()
    assert caught.value.status_code == 422
    assert json.loads(caught.value.response.text)["detail"][0]["type"] == "content_policy_violation"
    status = await handle.status()
    assert isinstance(status, fal_client.Completed) and status.error_type == "content_policy_violation"
    fake.error_type = None
    fake.cdn_url = "http://localhost:9/files/x/0.jpeg"  # a host off the allow-list: never fetched
    handle = await client.submit(DEV, arguments={"prompt": "a quiet street"})
    with pytest.raises(fal_client.client.FalClientHTTPError) as caught:
        await handle.get()
    assert caught.value.status_code == 502 and "allow-list" in caught.value.response.text
    await env["app"][GATEWAY].jobs.drain()
    assert [record["status"] for record in env["counters"].audits] == [422, 502]
    assert fake.served == 0


async def test_keys_tenants_and_cancel(env) -> None:
    with pytest.raises(fal_client.client.FalClientHTTPError) as caught:
        await sdk("wrong-key").submit(DEV, arguments={"prompt": "a cat"})
    assert caught.value.status_code == 401
    handle = await sdk().submit(DEV, arguments={"prompt": "a cat"})
    with pytest.raises(fal_client.client.FalClientHTTPError) as caught:
        await sdk(OTHER_TENANT_KEY).status(DEV, handle.request_id)
    assert caught.value.status_code == 404  # another tenant cannot see the job
    with pytest.raises(fal_client.client.FalClientHTTPError) as caught:
        await sdk(OTHER_TENANT_KEY).cancel(DEV, handle.request_id)
    assert caught.value.status_code == 404
    await handle.get()
    with pytest.raises(fal_client.client.FalClientHTTPError) as caught:
        await handle.cancel()
    assert caught.value.status_code == 400 and json.loads(caught.value.response.text)["status"] == "ALREADY_COMPLETED"


async def test_input_images_only_as_data_uris_and_screened(env) -> None:
    with pytest.raises(fal_client.client.FalClientHTTPError) as caught:
        await sdk().subscribe("fal-ai/flux/dev", arguments={"prompt": "make it blue", "image_url": "https://example.com/cat.png"})
    assert caught.value.status_code == 422
    assert json.loads(caught.value.response.text)["detail"][0]["loc"] == ["body", "image_url"]
    for field, value in (("control_image_url", "https://example.com/pose.png"), ("prompt_2", "anything")):
        with pytest.raises(fal_client.client.FalClientHTTPError) as caught:
            await sdk().run(DEV, arguments={"prompt": "a dancer", field: value})
        assert caught.value.status_code == 422 and json.loads(caught.value.response.text)["detail"][0]["loc"] == ["body", field]
    source = "data:image/png;base64," + base64.b64encode(make_image((24, 24))).decode("ascii")
    await sdk().subscribe(DEV, arguments={"prompt": "make it blue", "image_url": source, "strength": 0.9})
    sent = env["fake"].submitted[0]["body"]
    assert sent["image_url"].startswith("data:image/png;base64,") and sent["strength"] == 0.9
    *rejected, record = env["counters"].audits
    assert [audit["status"] for audit in rejected] == [422, 422, 422] and record["input_images"][0]["media_type"] == "image/png"


async def test_webhook_gets_the_processed_result_once_signed(env, tls) -> None:
    received: list[tuple[dict[str, str], bytes]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append((dict(request.headers), await request.read()))
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hook", hook)
    receiver, receiver_url = await serve(app)
    try:
        handle = await sdk().submit(SCHNELL, arguments={"prompt": "a lighthouse"}, webhook_url=f"{receiver_url}/hook")
        await env["app"][GATEWAY].jobs.drain()
        await handle.get()
    finally:
        await receiver.close()
    assert len(received) == 1
    headers, body = received[0]
    assert webhooks.verify(env["app"][GATEWAY].jobs.webhook_secret_for("acme"), headers, body)  # the tenant's own secret
    payload = json.loads(body)
    assert payload["request_id"] == handle.request_id and payload["status"] == "OK"
    assert URL(payload["payload"]["images"][0]["url"]).path.startswith("/v1/assets/")
    assert "fal_webhook" not in env["fake"].submitted[0]["body"]


async def test_budget_charges_fal_prices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tls) -> None:
    """$0.06 a day buys two FLUX [dev] megapixel images at $0.025; the third is refused up front."""
    async for env in start(tmp_path, monkeypatch, tls, acme={"limits": {"budgets": {"tenant": {"day_usd": 0.06}}}}):
        statuses, costs = [], []
        async with aiohttp.ClientSession() as http:
            for _ in range(3):
                async with http.post(f"{env['root']}/fal/run/{DEV}", json={"prompt": "a red kite", "image_size": "square_hd"},
                                     headers={"Authorization": f"Key {TENANT_KEY}"}, ssl=tls["client"]) as response:
                    statuses.append(response.status)
                    costs.append(response.headers.get("X-Imagegate-Cost-USD"))
                    body = await response.json()
        assert statuses == [200, 200, 429], body
        assert body["detail"].startswith("The daily budget") and costs[0] is not None and float(costs[0]) == pytest.approx(0.025)
        assert len(env["fake"].submitted) == 2


async def test_environment_variables_alone_point_the_sdk_at_imagegate(env, tls) -> None:
    """A fresh interpreter configured only as a user would: FAL_KEY, the two hosts, SSL_CERT_FILE."""
    script = (
        "import json, fal_client\n"
        "out = {'queue': fal_client.subscribe('fal-ai/flux/schnell', arguments={'prompt': 'a kite'}),\n"
        "       'run': fal_client.run('fal-ai/flux/schnell', arguments={'prompt': 'a kite'})}\n"
        "print(json.dumps(out))\n"
    )
    child_env = {
        "PATH": "/usr/bin:/bin", "HOME": str(env["trust"].parent), "FAL_KEY": TENANT_KEY, "SSL_CERT_FILE": tls["ca_file"],
        "FAL_QUEUE_RUN_HOST": f"{env['host']}/fal/queue", "FAL_RUN_HOST": f"{env['host']}/fal/run",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, env=child_env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == 0, stderr.decode()[-2000:]
    out = json.loads(stdout.decode().strip().splitlines()[-1])
    for result in out.values():
        assert URL(result["images"][0]["url"]).path.startswith("/v1/assets/")
    await env["app"][GATEWAY].jobs.drain()
    assert [record["route"].split("/")[2] for record in env["counters"].audits] == ["queue", "run"]
