"""Sidecar manifests for job surfaces (BFL here, through plain HTTP as BFL's docs show): the job's
result keeps the provider's shape (`result.sample`), and the sample's asset URL points at its C2PA
manifest store with `Link: <...>; rel="c2pa-manifest"`, the store verifying as trusted against the
untouched image."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from yarl import URL

from provenance import verify_image
from provenance.media import has_c2pa_segment
from proxy.app import create_app
from proxy.settings import Settings
from proxy.stages.factory import full_stages
from tests.conftest import TENANT_KEY
from tests.fakes.bfl import FakeBFL
from tests.fakes.openai_upstream import make_image
from tests.fakes.provider_harness import provider_settings, serve


@pytest.fixture(params=["sidecar", "embedded"])
async def env(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[dict[str, Any]]:
    fake = FakeBFL(pending_polls=0)
    monkeypatch.setenv("IMAGEGATE_TEST_PROVIDER_KEY", fake.key)
    upstream, upstream_url = await serve(fake.app())
    data = provider_settings(tmp_path, "bfl", "bfl", upstream_url, ["flux-dev"]).model_dump(mode="json")
    data["provenance"] = {"mode": request.param}
    server = TestServer(create_app(Settings.model_validate(data), stages=full_stages), host="127.0.0.1")
    await server.start_server()
    try:
        yield {"mode": request.param, "base": str(server.make_url("/bfl")), "root": (tmp_path / "data" / "dev-keys" / "dev-root-ca.pem").read_text()}
    finally:
        await server.close()
        await upstream.close()


async def test_job_result_links_its_sidecar(env: dict[str, Any]) -> None:
    headers = {"x-key": TENANT_KEY, "accept": "application/json"}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{env['base']}/v1/flux-dev", json={"prompt": "a lighthouse"}, headers=headers) as response:
            assert response.status == 200
            job = await response.json()
        for _ in range(200):
            async with http.get(job["polling_url"], headers=headers) as response:
                result = await response.json()
            if result["status"] != "Pending":
                break
            await asyncio.sleep(0.02)
        assert result["status"] == "Ready", result
        assert set(result["result"]) == {"sample", "prompt", "seed", "start_time", "end_time", "duration"}  # BFL's shape, unchanged
        async with http.get(result["result"]["sample"]) as response:
            assert response.status == 200
            image, links = await response.read(), response.headers.getall("Link", [])
        if env["mode"] == "embedded":
            assert links == []
            assert verify_image(image, "image/jpeg", env["root"]).state == "trusted"
            return
        [link] = links
        target, rel = link.split(">; ", 1)
        assert rel == 'rel="c2pa-manifest"'
        manifest_url = URL(target.removeprefix("<"))
        assert manifest_url.path == URL(result["result"]["sample"]).path + ".c2pa"
        async with http.get(manifest_url) as response:
            assert response.status == 200 and response.content_type == "application/c2pa"
            store = await response.read()
        async with http.get(manifest_url.update_query(signature="f" * 64)) as response:
            assert response.status == 403
    assert image == make_image((40, 30), "jpeg", (10, 200, 90)) and not has_c2pa_segment(image, "image/jpeg")
    report = verify_image(image, "image/jpeg", env["root"], manifest_store=store)
    assert report.state == "trusted" and report.manifest_source == "sidecar", report.failures
