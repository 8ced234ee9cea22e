"""The asset store: images imagegate serves under its own URLs (URL responses, jobs, review queue).

The embedded default is a local folder; an S3-compatible object store (AWS S3, MinIO, Cloudflare
R2...) is the option for several replicas, so that an image stored by one replica is served by any
other. Asset names are random (128 bits) and every URL handed to a client is signed (HMAC-SHA256 over
name and expiry) and expires, so a URL cannot be guessed, extended or turned into another asset.
Names are validated before they touch a folder or a bucket, so a name can never escape either.
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

from ..exchange import FORMATS

if TYPE_CHECKING:
    from ..settings import AssetSettings

_NAME = re.compile(r"^[0-9a-f]{32}\.(png|jpeg|webp)$")


class AssetNotFound(Exception):
    pass


def new_name(media_type: str) -> str:
    return f"{secrets.token_hex(16)}.{FORMATS.get(media_type, 'png')}"


def valid_name(name: str) -> bool:
    return bool(_NAME.match(name))


class AssetStore(abc.ABC):
    """Stored images plus the signed, expiring URLs that point at them."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    @abc.abstractmethod
    async def put(self, data: bytes, media_type: str) -> str:
        """Store `data` and return its (new, random) name."""

    @abc.abstractmethod
    async def get(self, name: str) -> bytes:
        """The bytes of `name`, or `AssetNotFound`."""

    @abc.abstractmethod
    async def delete(self, names: Sequence[str]) -> int:
        """Remove these assets (retention); returns how many existed. Invalid names are ignored."""

    async def close(self) -> None:  # noqa: B027 (optional hook)
        """Release clients and connections."""

    def sign(self, name: str, expires: int) -> str:
        return hmac.new(self._secret, f"{name}:{expires}".encode(), hashlib.sha256).hexdigest()

    def signed_path(self, name: str, ttl_s: int) -> str:
        expires = int(time.time()) + ttl_s
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

    async def put(self, data: bytes, media_type: str) -> str:
        name = new_name(media_type)
        path = self.folder / name

        def _write() -> None:
            self.folder.mkdir(parents=True, exist_ok=True)
            temporary = path.with_suffix(".tmp")
            temporary.write_bytes(data)
            temporary.replace(path)

        await asyncio.to_thread(_write)
        return name

    async def get(self, name: str) -> bytes:
        if not valid_name(name):
            raise AssetNotFound(name)
        path = self.folder / name
        try:
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError as exc:
            raise AssetNotFound(name) from exc

    async def delete(self, names: Sequence[str]) -> int:
        def _remove() -> int:
            removed = 0
            for name in names:
                if valid_name(name):
                    try:
                        (self.folder / name).unlink()
                        removed += 1
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

    async def put(self, data: bytes, media_type: str) -> str:
        name = new_name(media_type)
        await asyncio.to_thread(
            self._client.put_object, Bucket=self.bucket, Key=self._key(name), Body=data, ContentType=media_type
        )
        return name

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

    async def delete(self, names: Sequence[str]) -> int:
        keys = [self._key(name) for name in names if valid_name(name)]
        if not keys:
            return 0

        def _delete() -> int:
            existing = 0
            for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
                chunk = keys[start : start + 1000]
                for key in chunk:  # S3 reports deletes of missing keys as success: count first
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
