"""`POST /v1/provenance/verify`: reports for uploaded and linked images, audited."""

from __future__ import annotations

import base64
from pathlib import Path

import aiohttp
import openai

from proxy.app import GATEWAY
from proxy.stages.factory import full_stages
from tests.conftest import TENANT_KEY, make_settings
from tests.fakes.openai_upstream import make_image

AUTH = {"Authorization": f"Bearer {TENANT_KEY}"}


async def signed_image(base_url: str) -> bytes:
    async with openai.AsyncOpenAI(base_url=base_url, api_key=TENANT_KEY, max_retries=0) as sdk:
        result = await sdk.images.generate(model="demo", prompt="a signed lighthouse", size="256x256")
    return base64.b64decode(result.data[0].b64_json)


async def test_upload_reports_trusted_invalid_and_none(tmp_path: Path, start_gateway) -> None:
    server, base = await start_gateway(make_settings(tmp_path), stages=full_stages)
    signed = await signed_image(base)
    tampered = signed + b"appended"
    form = aiohttp.FormData()
    form.add_field("image", signed, filename="signed.png", content_type="image/png")
    form.add_field("image", tampered, filename="tampered.png", content_type="image/png")
    form.add_field("image", make_image(), filename="plain.png", content_type="image/png")
    form.add_field("image", b"not an image", filename="junk.bin")
    async with aiohttp.ClientSession(headers=AUTH) as session:
        async with session.post(base + "/provenance/verify", data=form) as response:
            assert response.status == 200
            body = await response.json()
            audit_id = response.headers["X-Imagegate-Audit-Id"]
    states = {r["source"]: r["state"] for r in body["results"]}
    assert states == {"signed.png": "trusted", "tampered.png": "invalid", "plain.png": "none", "junk.bin": "unreadable"}
    tampered_report = next(r for r in body["results"] if r["source"] == "tampered.png")
    assert tampered_report["failures"] and tampered_report["failures"][0]["message"]
    assert body["summary"] == {"images": 4, "trusted": 1, "invalid": 1, "none": 1, "unreadable": 1}
    record = await server.app[GATEWAY].audit.get(audit_id)
    assert record["operation"] == "verify" and record["verified"]["trusted"] == 1


async def test_raw_body_and_refused_private_url(tmp_path: Path, start_gateway) -> None:
    _, base = await start_gateway(make_settings(tmp_path), stages=full_stages)
    signed = await signed_image(base)
    async with aiohttp.ClientSession(headers=AUTH) as session:
        async with session.post(base + "/provenance/verify", data=signed, headers={"Content-Type": "image/png"}) as response:
            assert (await response.json())["results"][0]["state"] == "trusted"
        async with session.post(base + "/provenance/verify", json={"urls": [base + "/assets/x.png", "http://169.254.169.254/"]}) as response:
            body = await response.json()
    assert [r["code"] for r in body["results"]] == ["unsafe_url", "unsafe_url"]


async def test_verify_requires_a_key(tmp_path: Path, start_gateway) -> None:
    _, base = await start_gateway(make_settings(tmp_path), stages=full_stages)
    async with aiohttp.ClientSession() as session:
        async with session.post(base + "/provenance/verify", data=b"x", headers={"Content-Type": "image/png"}) as response:
            assert response.status == 401
