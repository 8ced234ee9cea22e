"""The asset store: images imagegate serves under its own URLs (URL responses, review queue).

The embedded default is a local folder. Asset names are random (128 bits) and every URL handed to a
client is signed (HMAC-SHA256 over name and expiry) and expires, so a URL cannot be guessed,
extended or turned into another asset. Names are validated before they touch the filesystem, so a
path can never escape the folder.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
import time
from pathlib import Path

from ..exchange import FORMATS

_NAME = re.compile(r"^[0-9a-f]{32}\.(png|jpeg|webp)$")


class AssetNotFound(Exception):
    pass


class LocalAssetStore:
    def __init__(self, folder: Path, secret: bytes) -> None:
        self.folder = Path(folder)
        self._secret = secret

    async def put(self, data: bytes, media_type: str) -> str:
        """Store `data` and return its name."""
        name = f"{secrets.token_hex(16)}.{FORMATS.get(media_type, 'png')}"
        path = self.folder / name

        def _write() -> None:
            self.folder.mkdir(parents=True, exist_ok=True)
            temporary = path.with_suffix(".tmp")
            temporary.write_bytes(data)
            temporary.replace(path)

        await asyncio.to_thread(_write)
        return name

    async def get(self, name: str) -> bytes:
        if not _NAME.match(name):
            raise AssetNotFound(name)
        path = self.folder / name
        try:
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError as exc:
            raise AssetNotFound(name) from exc

    def sign(self, name: str, expires: int) -> str:
        return hmac.new(self._secret, f"{name}:{expires}".encode(), hashlib.sha256).hexdigest()

    def signed_path(self, name: str, ttl_s: int) -> str:
        expires = int(time.time()) + ttl_s
        return f"/v1/assets/{name}?expires={expires}&signature={self.sign(name, expires)}"

    def check(self, name: str, expires: str, signature: str) -> bool:
        """Whether a URL's signature is genuine and not expired."""
        if not _NAME.match(name) or not expires.isdigit():
            return False
        if int(expires) < time.time():
            return False
        return hmac.compare_digest(self.sign(name, int(expires)), signature)


def load_or_create_secret(path: Path) -> bytes:
    """The URL-signing secret, created once per data folder and kept private."""
    if path.exists():
        return bytes.fromhex(path.read_text().strip())
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_bytes(32)
    path.touch(mode=0o600)
    path.write_text(secret.hex())
    return secret
