"""C2PA sidecars in the asset store: stored beside their image as `<asset>.c2pa`, named and signed
like any asset, served as `application/c2pa`, and deleted with their image (retention included),
on the local folder and on S3 (moto's S3 server)."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from policies.retention import RetentionPolicy
from proxy.exchange import Exchange, GeneratedImage, GenerationRequest, GenerationResult
from proxy.stages.provenance import (
    SIDECARS_NOTE,
    Sidecar,
    manifest_fields,
    publish_sidecar,
    remember_sidecar_url,
)
from proxy.stores.assets import (
    AssetNotFound,
    AssetStore,
    LocalAssetStore,
    S3AssetStore,
    media_type_of,
    sidecar_of,
    valid_name,
)
from proxy.stores.audit import SqliteAuditStore
from proxy.stores.audit_retention import purge

IMAGE = "a" * 32 + ".png"
NOW = 1_800_000_000.0


def test_sidecar_names_are_image_names_plus_c2pa_and_nothing_else() -> None:
    assert sidecar_of(IMAGE) == IMAGE + ".c2pa"
    assert valid_name(IMAGE + ".c2pa") and media_type_of(IMAGE + ".c2pa") == "application/c2pa"
    assert media_type_of(IMAGE) == "image/png" and media_type_of("b" * 32 + ".jpeg") == "image/jpeg"
    for bad in ("a" * 32 + ".c2pa", IMAGE + ".c2pa.c2pa", "../" + IMAGE + ".c2pa", IMAGE + ".c2pa/x", IMAGE.upper() + ".c2pa"):
        assert not valid_name(bad), bad
    for not_an_image in (IMAGE + ".c2pa", "../" + IMAGE, "x.png"):
        with pytest.raises(ValueError):
            sidecar_of(not_an_image)


async def check_store(store: AssetStore) -> None:
    """The sidecar contract, whatever the backend."""
    image = await store.put(b"\x89PNG image", "image/png")
    other = await store.put(b"\x89PNG other", "image/png")
    sidecar = await store.put_sidecar(image, b"jumb c2pa store")
    assert sidecar == image + ".c2pa"
    assert await store.get(sidecar) == b"jumb c2pa store" and await store.get(image) == b"\x89PNG image"
    assert await store.exists(sidecar) and not await store.exists(other + ".c2pa")
    assert not await store.exists("../" + sidecar)
    with pytest.raises(ValueError):
        await store.put_sidecar(sidecar, b"a sidecar of a sidecar")
    with pytest.raises(ValueError):
        await store.put_sidecar("../escape.png", b"x")
    # Signed URLs: the sidecar has its own signature; the image's does not open it.
    expires = int(time.time()) + 60
    assert store.check(sidecar, str(expires), store.sign(sidecar, expires))
    assert not store.check(sidecar, str(expires), store.sign(image, expires))
    assert store.signed_path_until(sidecar, expires) == f"/v1/assets/{sidecar}?expires={expires}&signature={store.sign(sidecar, expires)}"
    # Deleting an image deletes its sidecar; only the names asked for are counted.
    assert await store.delete([image, other]) == 2
    for gone in (image, sidecar, other):
        with pytest.raises(AssetNotFound):
            await store.get(gone)
    # A sidecar can also be deleted by its own name.
    third = await store.put(b"\x89PNG third", "image/png")
    await store.put_sidecar(third, b"store")
    assert await store.delete([third + ".c2pa"]) == 1
    assert await store.get(third) == b"\x89PNG third" and not await store.exists(third + ".c2pa")


async def test_local_store_keeps_sidecars_beside_their_images(tmp_path: Path) -> None:
    store = LocalAssetStore(tmp_path / "assets", b"k" * 32)
    await check_store(store)
    assert not list((tmp_path / "assets").glob("*.tmp"))


async def test_s3_store_keeps_sidecars_beside_their_images(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3

    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"), ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    bucket = f"imagegate-sidecars-{uuid.uuid4().hex[:8]}"
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket=bucket)
    store = S3AssetStore(bucket, b"k" * 32, prefix="assets/", endpoint_url=s3_endpoint, region="us-east-1")
    try:
        image = await store.put(b"\x89PNG", "image/png")
        await store.put_sidecar(image, b"store")
        head = client.head_object(Bucket=bucket, Key=f"assets/{image}.c2pa")
        assert head["ContentType"] == "application/c2pa"
        assert await store.delete([image]) == 1
        assert client.list_objects_v2(Bucket=bucket).get("KeyCount") == 0
        await check_store(store)
    finally:
        await store.close()


def sidecar_exchange(response_format: str) -> Exchange:
    exchange = Exchange(route="/v1/images/generations", operation="generate")
    exchange.request = GenerationRequest(operation="generate", model="demo", prompt="p", response_format=response_format)  # type: ignore[arg-type]
    exchange.result = GenerationResult(
        provider="demo",
        model="demo",
        images=[GeneratedImage(data=b"withheld", media_type="image/png", withheld=True), GeneratedImage(data=b"img", media_type="image/png")],
    )
    exchange.notes[SIDECARS_NOTE] = {1: Sidecar(manifest_id="urn:c2pa:1", data=b"store")}
    return exchange


async def test_publish_and_name_sidecars_by_image_index(tmp_path: Path) -> None:
    store = LocalAssetStore(tmp_path / "assets", b"k" * 32)
    exchange = sidecar_exchange("url")
    image = await store.put(b"img", "image/png")
    assert await publish_sidecar(exchange, 0, store, image) is None  # no sidecar for the withheld one
    sidecar = await publish_sidecar(exchange, 1, store, image)
    assert sidecar == image + ".c2pa" and await store.get(sidecar) == b"store"
    assert manifest_fields(exchange, 1) == {}  # a URL response names only a stored, signed sidecar
    remember_sidecar_url(exchange, 1, "https://gw/v1/assets/x.png.c2pa?expires=1&signature=s")
    assert manifest_fields(exchange, 1) == {"c2pa_manifest_url": "https://gw/v1/assets/x.png.c2pa?expires=1&signature=s"}
    assert manifest_fields(sidecar_exchange("b64_json"), 1) == {"c2pa_manifest_b64": "c3RvcmU="}
    assert manifest_fields(sidecar_exchange("b64_json"), 0) == {}


async def test_retention_deletes_a_retained_image_with_its_sidecar(tmp_path: Path) -> None:
    assets = LocalAssetStore(tmp_path / "assets", b"k" * 32)
    kept = await assets.put(b"\x89PNG flagged", "image/png")
    await assets.put_sidecar(kept, b"store")
    unrelated = await assets.put(b"\x89PNG other", "image/png")
    await assets.put_sidecar(unrelated, b"other store")
    store = SqliteAuditStore(tmp_path / "audit.sqlite3")
    await store.start()
    try:
        retained = [{"index": 0, "asset": kept, "media_type": "image/png", "sha256": "b" * 64,
                     "verdicts": [{"stage": "output_classifier", "action": "flag"}], "review_item": "rev_1"}]  # fmt: skip
        await store.append({"id": "aud_0001", "time": NOW - 100 * 86400.0, "tenant": "acme", "end_user": "u", "model": "demo",
                            "outcome": "flag", "status": 200, "retained_images": retained})  # fmt: skip
        policy = RetentionPolicy.model_validate({"default": {"redact_after_days": {"retained_images": 90}}})
        report = await purge(store, policy, assets=assets, now=NOW)
    finally:
        await store.close()
    assert report.images_removed == 1  # the image is counted, its sidecar goes with it
    assert not await assets.exists(kept) and not await assets.exists(kept + ".c2pa")
    assert await assets.exists(unrelated) and await assets.exists(unrelated + ".c2pa")
