"""The asset store: images imagegate serves under its own URLs (URL responses, jobs, review queue).

The embedded default is a local folder; an S3-compatible object store (AWS S3, MinIO, Cloudflare
R2...) is the option for several replicas, so that an image stored by one replica is served by any
other. Asset names are random (128 bits) and every URL handed to a client is signed (HMAC-SHA256 over
name and expiry) and expires, so a URL cannot be guessed, extended or turned into another asset.
Names are validated before they touch a folder or a bucket, so a name can never escape either.

An image may have a C2PA sidecar (its manifest store, `application/c2pa`) stored beside it as
`<image name>.c2pa` (`put_sidecar`), served through the same signed URLs under its own signature;
deleting an image deletes its sidecar too, so retention never leaves a manifest behind.
"""

from __future__ import annotations

import abc
import asyncio
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from provenance.containers import MANIFEST_STORE_MEDIA_TYPE, SIDECAR_SUFFIX

from ..exchange import FORMATS
from ..exchange import MEDIA_TYPES as IMAGE_MEDIA_TYPES

if TYPE_CHECKING:
    from ..settings import AssetSettings

_NAME = re.compile(r"^[0-9a-f]{32}\.(png|jpeg|webp)(\.c2pa)?$")

SIDECAR_MEDIA_TYPE = MANIFEST_STORE_MEDIA_TYPE
#: What a stored name is served as, by its last extension.
MEDIA_TYPES = {**IMAGE_MEDIA_TYPES, SIDECAR_SUFFIX.lstrip("."): SIDECAR_MEDIA_TYPE}


class AssetNotFound(Exception):
    pass


def new_name(media_type: str) -> str:
    return f"{secrets.token_hex(16)}.{FORMATS.get(media_type, 'png')}"


def valid_name(name: str) -> bool:
    return bool(_NAME.match(name))


def is_sidecar(name: str) -> bool:
    return name.endswith(SIDECAR_SUFFIX)


def sidecar_of(name: str) -> str:
    """The name of an image's sidecar: `<32 hex>.png` -> `<32 hex>.png.c2pa`."""
    if not valid_name(name) or is_sidecar(name):
        raise ValueError(f"not an image asset name: {name!r}")
    return name + SIDECAR_SUFFIX


def media_type_of(name: str) -> str:
    """The media type a (valid) stored name is served with."""
    return MEDIA_TYPES[name.rsplit(".", 1)[1]]


def _with_sidecars(names: Sequence[str]) -> list[str]:
    """The valid `names`, each image followed by its sidecar's name (deleted with it)."""
    valid = [name for name in names if valid_name(name)]
    return valid + [sidecar_of(name) for name in valid if not is_sidecar(name)]


class AssetStore(abc.ABC):
    """Stored images plus the signed, expiring URLs that point at them."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    async def put(self, data: bytes, media_type: str) -> str:
        """Store `data` and return its (new, random) name."""
        name = new_name(media_type)
        await self._store(name, data, media_type)
        return name

    async def put_sidecar(self, image_name: str, data: bytes) -> str:
        """Store the C2PA manifest store of image `image_name` beside it; returns the sidecar's name."""
        name = sidecar_of(image_name)
        await self._store(name, data, SIDECAR_MEDIA_TYPE)
        return name

    @abc.abstractmethod
    async def _store(self, name: str, data: bytes, media_type: str) -> None:
        """Write `data` under `name` (already validated), replacing it atomically."""

    @abc.abstractmethod
    async def get(self, name: str) -> bytes:
        """The bytes of `name`, or `AssetNotFound`."""

    @abc.abstractmethod
    async def exists(self, name: str) -> bool:
        """Whether `name` is stored (False for an invalid name)."""

    @abc.abstractmethod
    async def delete(self, names: Sequence[str]) -> int:
        """Remove these assets (retention) and the sidecars of the images among them; returns how
        many of `names` existed (sidecars removed along are not counted). Invalid names are ignored."""

    async def close(self) -> None:  # noqa: B027 (optional hook)
        """Release clients and connections."""

    def sign(self, name: str, expires: int) -> str:
        return hmac.new(self._secret, f"{name}:{expires}".encode(), hashlib.sha256).hexdigest()

    def signed_path(self, name: str, ttl_s: int) -> str:
        return self.signed_path_until(name, int(time.time()) + ttl_s)

    def signed_path_until(self, name: str, expires: int) -> str:
        return f"/v1/assets/{name}?expires={expires}&signature={self.sign(name, expires)}"

    def check(self, name: str, expires: str, signature: str) -> bool:
        """Whether a URL's signature is genuine and not expired."""
        if not valid_name(name) or not expires.isdigit():
            return False
        if int(expires) < time.time():
            return False
        return hmac.compare_digest(self.sign(name, int(expires)), signature)


class LocalAssetStore(AssetStore):
    def __init__(self, folder: Path, secret: bytes) -> None:
        super().__init__(secret)
        self.folder = Path(folder)

    async def _store(self, name: str, data: bytes, media_type: str) -> None:
        path = self.folder / name

        def _write() -> None:
            self.folder.mkdir(parents=True, exist_ok=True)
            temporary = self.folder / (name + ".tmp")
            temporary.write_bytes(data)
            temporary.replace(path)

        await asyncio.to_thread(_write)

    async def get(self, name: str) -> bytes:
        if not valid_name(name):
            raise AssetNotFound(name)
        path = self.folder / name
        try:
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError as exc:
            raise AssetNotFound(name) from exc

    async def exists(self, name: str) -> bool:
        return valid_name(name) and await asyncio.to_thread((self.folder / name).is_file)

    async def delete(self, names: Sequence[str]) -> int:
        asked = {name for name in names if valid_name(name)}

        def _remove() -> int:
            removed = 0
            for name in _with_sidecars(names):
                try:
                    (self.folder / name).unlink()
                    removed += name in asked
                except FileNotFoundError:
                    pass
            return removed

        return await asyncio.to_thread(_remove)


class S3AssetStore(AssetStore):
    """Assets as objects `prefix + name` in an S3-compatible bucket, through boto3 (the `[s3]` extra).

    Credentials come from boto3's own chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, a profile,
    an instance or pod role), never from imagegate's YAML. boto3 is synchronous: every call runs in a
    worker thread, so the event loop never waits on the network.
    """

    def __init__(
        self,
        bucket: str,
        secret: bytes,
        *,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        timeout_s: float = 10.0,
        client: Any = None,
    ) -> None:
        super().__init__(secret)
        self.bucket = bucket
        self.prefix = prefix
        if client is None:
            try:
                import boto3
                from botocore.config import Config
            except ImportError as exc:  # pragma: no cover - depends on the install
                raise RuntimeError('assets.backend "s3" needs boto3: pip install "imagegate[s3]"') from exc
            config = Config(connect_timeout=timeout_s, read_timeout=timeout_s, retries={"max_attempts": 3, "mode": "standard"})
            client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)
        self._client = client

    def _key(self, name: str) -> str:
        return self.prefix + name

    async def _store(self, name: str, data: bytes, media_type: str) -> None:
        await asyncio.to_thread(
            self._client.put_object, Bucket=self.bucket, Key=self._key(name), Body=data, ContentType=media_type
        )

    async def get(self, name: str) -> bytes:
        if not valid_name(name):
            raise AssetNotFound(name)

        def _get() -> bytes:
            try:
                answer = self._client.get_object(Bucket=self.bucket, Key=self._key(name))
            except self._client.exceptions.NoSuchKey as exc:
                raise AssetNotFound(name) from exc
            body = answer["Body"]
            try:
                return bytes(body.read())
            finally:
                body.close()

        return await asyncio.to_thread(_get)

    async def exists(self, name: str) -> bool:
        if not valid_name(name):
            return False

        def _head() -> bool:
            try:
                self._client.head_object(Bucket=self.bucket, Key=self._key(name))
                return True
            except self._client.exceptions.ClientError:
                return False

        return await asyncio.to_thread(_head)

    async def delete(self, names: Sequence[str]) -> int:
        asked = {self._key(name) for name in names if valid_name(name)}
        keys = [self._key(name) for name in _with_sidecars(names)]
        if not keys:
            return 0

        def _delete() -> int:
            existing = 0
            for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
                chunk = keys[start : start + 1000]
                for key in chunk:  # S3 reports deletes of missing keys as success: count first
                    if key not in asked:
                        continue  # a sidecar goes with its image, uncounted: no HEAD needed
                    try:
                        self._client.head_object(Bucket=self.bucket, Key=key)
                        existing += 1
                    except self._client.exceptions.ClientError:
                        pass
                answer = self._client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": [{"Key": key} for key in chunk], "Quiet": True}
                )
                if answer.get("Errors"):
                    raise OSError(f"S3 refused to delete {len(answer['Errors'])} assets: {answer['Errors'][0].get('Message')}")
            return existing

        return await asyncio.to_thread(_delete)

    async def close(self) -> None:
        await asyncio.to_thread(self._client.close)


def open_asset_store(config: AssetSettings, data_dir: Path) -> AssetStore:
    """The store `assets:` configures; the URL-signing secret is shared by every replica."""
    secret = load_or_create_secret(data_dir / "url-signing.key")
    if config.backend == "s3":
        if not config.s3_bucket:
            from ..settings import ConfigError

            raise ConfigError('assets.backend "s3" needs assets.s3_bucket')
        return S3AssetStore(
            config.s3_bucket,
            secret,
            prefix=config.s3_prefix,
            endpoint_url=config.s3_endpoint_url,
            region=config.s3_region,
            timeout_s=config.timeout_s,
        )
    return LocalAssetStore(data_dir / "assets", secret)


def load_or_create_secret(path: Path) -> bytes:
    """The URL-signing secret, created once per data folder and kept private."""
    if path.exists():
        return bytes.fromhex(path.read_text().strip())
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_bytes(32)
    path.touch(mode=0o600)
    path.write_text(secret.hex())
    return secret
