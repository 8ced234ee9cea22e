"""The stores that let several replicas act as one: S3-compatible assets and Redis-backed jobs.

The S3 side runs against moto's S3 server (a real HTTP endpoint speaking the S3 API, driven by the
real boto3 client); the job side against the real Redis. The end-to-end test starts two imagegate
replicas sharing both: a BFL job submitted to one is polled, and its image fetched, from the other.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from yarl import URL

from proxy.app import GATEWAY, create_app
from proxy.jobs import JobRecord, RedisJobStore, open_job_store
from proxy.settings import ConfigError, JobSettings, Settings
from proxy.stores.assets import AssetNotFound, S3AssetStore, open_asset_store
from tests.conftest import OTHER_TENANT_KEY, TENANT_KEY
from tests.fakes.bfl import FakeBFL
from tests.fakes.provider_harness import Counters, count_audits, counting_stages, is_signed, provider_settings, serve
from tests.proxy.test_limits_store import REDIS_URL

pytest.importorskip("moto.server", reason="moto[server] (dev extra) runs the S3 endpoint")
BUCKET = "imagegate-test"


@pytest.fixture
def s3_bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    import boto3

    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"), ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    bucket = f"{BUCKET}-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    return bucket


async def test_s3_store_round_trip_delete_and_names(s3_endpoint: str, s3_bucket: str) -> None:
    store = S3AssetStore(s3_bucket, b"k" * 32, prefix="assets/", endpoint_url=s3_endpoint, region="us-east-1")
    try:
        first = await store.put(b"\x89PNG first", "image/png")
        second = await store.put(b"\xff\xd8 second", "image/jpeg")
        assert first.endswith(".png") and second.endswith(".jpeg") and first != second
        assert await store.get(first) == b"\x89PNG first" and await store.get(second) == b"\xff\xd8 second"
        import boto3

        listed = boto3.client("s3", endpoint_url=s3_endpoint).list_objects_v2(Bucket=s3_bucket)["Contents"]
        assert sorted(item["Key"] for item in listed) == sorted(["assets/" + first, "assets/" + second])
        # Names are checked before any key is built: nothing outside the prefix is reachable.
        for bad in ("../secret.png", "assets/" + first, first.upper(), first + "/x"):
            with pytest.raises(AssetNotFound):
                await store.get(bad)
        # Retention deletes: counts what existed, ignores invalid names and missing ones.
        assert await store.delete([first, "0" * 32 + ".png", "../x.png"]) == 1
        with pytest.raises(AssetNotFound):
            await store.get(first)
        assert await store.get(second) == b"\xff\xd8 second"
    finally:
        await store.close()


def test_s3_backend_needs_a_bucket(tmp_path: Path) -> None:
    settings = Settings.model_validate({"server": {"data_dir": str(tmp_path)}, "assets": {"backend": "s3"}})
    with pytest.raises(ConfigError, match="s3_bucket"):
        open_asset_store(settings.assets, tmp_path)


async def test_redis_job_store_first_final_record_wins() -> None:
    prefix = f"igtest:jobs:{uuid.uuid4().hex[:8]}:"
    first, second = RedisJobStore(REDIS_URL, key_prefix=prefix, ttl_s=60), RedisJobStore(REDIS_URL, key_prefix=prefix, ttl_s=60)
    try:
        job = JobRecord(id="job-1", surface="bfl", tenant="acme")
        await first.create(job)
        await second.create(JobRecord(id="job-1", surface="bfl", tenant="intruder"))  # SET NX: ignored
        assert (await second.get("job-1")).tenant == "acme"
        done = JobRecord(id="job-1", surface="bfl", tenant="acme", status="succeeded", assets=[{"name": "a", "media_type": "image/png"}])
        failed = JobRecord(id="job-1", surface="bfl", tenant="acme", status="failed", error={"code": "late"})
        results = await asyncio.gather(first.finish(done), second.finish(failed))
        assert sorted(results) == [False, True]  # exactly one replica's outcome is stored
        stored = await first.get("job-1")
        assert stored is not None and stored.status in ("succeeded", "failed")
        assert await first.finish(JobRecord(id="job-1", surface="bfl", status="succeeded")) is False
        assert await first.get("unknown") is None
        ttl = await first._client.pttl(prefix + "job-1")
        assert 0 < ttl <= 60_000
    finally:
        await first._client.delete(prefix + "job-1")
        await first.close()
        await second.close()


def test_redis_job_store_url_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="IG_TEST_MISSING"):
        open_job_store(JobSettings(backend="redis", redis_url_env="IG_TEST_MISSING"))


@pytest.fixture
async def two_replicas(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, s3_endpoint: str, s3_bucket: str) -> AsyncIterator[dict[str, Any]]:
    fake = FakeBFL()
    monkeypatch.setenv("IMAGEGATE_TEST_PROVIDER_KEY", fake.key)
    upstream, upstream_url = await serve(fake.app())
    base = provider_settings(tmp_path, "bfl", "bfl", upstream_url, ["flux-dev"]).model_dump(mode="json")
    prefix = f"igtest:jobs:{uuid.uuid4().hex[:8]}:"
    base["assets"] = {"backend": "s3", "s3_bucket": s3_bucket, "s3_endpoint_url": s3_endpoint, "s3_region": "us-east-1"}
    base["jobs"] = {"backend": "redis", "redis_url": REDIS_URL, "key_prefix": prefix}
    counters = Counters()
    servers, roots = [], []
    signing_key = os.urandom(32).hex()
    for replica in ("a", "b"):
        # A data folder each (no shared disk), one URL-signing key (a mounted secret in deployments).
        data_dir = tmp_path / f"replica-{replica}"
        data_dir.mkdir()
        (data_dir / "url-signing.key").write_text(signing_key)
        settings = Settings.model_validate({**base, "server": {**base["server"], "data_dir": str(data_dir)}})
        app = create_app(settings, stages=counting_stages(counters))
        count_audits(app, counters)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        roots.append(str(server.make_url("")))
    try:
        yield {"fake": fake, "counters": counters, "roots": roots, "apps": [s.app for s in servers]}
    finally:
        for server in servers:
            await server.close()
        await upstream.close()
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(prefix + "*"):
            client.delete(key)
        client.close()


async def test_job_submitted_to_one_replica_is_polled_and_served_by_the_other(two_replicas: dict[str, Any]) -> None:
    first, second = two_replicas["roots"]
    counters = two_replicas["counters"]
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{first}/bfl/v1/flux-dev", json={"prompt": "a cat holding a fish"}, headers={"x-key": TENANT_KEY}) as response:
            assert response.status == 200, await response.text()
            job = await response.json()
        # The polling URL names replica one; a load balancer may send the poll to replica two.
        path = URL(job["polling_url"]).path_qs
        for _ in range(300):
            async with http.get(second + path, headers={"x-key": TENANT_KEY}) as response:
                assert response.status == 200, await response.text()
                result = await response.json()
            if result["status"] != "Pending":
                break
            await asyncio.sleep(0.02)
        assert result["status"] == "Ready", result
        # Another tenant cannot see the job on either replica.
        async with http.get(second + path, headers={"x-key": OTHER_TENANT_KEY}) as response:
            assert response.status == 404
        sample = result["result"]["sample"]
        async with http.get(second + URL(sample).path_qs) as response:  # served from S3 by replica two
            assert response.status == 200
            image = await response.read()
    assert is_signed(image)
    for app in two_replicas["apps"]:
        await app[GATEWAY].jobs.drain()
    assert counters.classified == counters.signed == 1  # processed once, on the replica that ran it
    assert [record["status"] for record in counters.audits] == [200]
    assert json.dumps(counters.audits[0]).count("flux-dev") >= 1
