"""Mask imagegate's own upstream credentials in what a provider sends back to the client.

imagegate injects the provider key into every upstream call, and passes some upstream answers back
unchanged (a provider's 4xx error body, every pass-through response). A provider, or a proxy in
front of it, that echoes the request's `Authorization` header into its answer would hand the key to
the client. Everything that is passed back is therefore masked here: each occurrence of a secret is
replaced by as many `*` characters, so lengths (and a streamed `Content-Length`) stay right.

Only the exact secret is masked (it is what an echo carries); this module never decodes or parses
the bytes it masks, and never logs them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

#: Request headers that carry a provider credential (`Bearer KEY`, `Token KEY` or the bare key).
CREDENTIAL_HEADERS = frozenset({"authorization", "x-key", "x-api-key", "api-key", "x-goog-api-key"})
#: Secrets shorter than this are not masked: masking "ab" would corrupt unrelated bytes.
MIN_SECRET_LENGTH = 8


def credentials_in(headers: Mapping[str, str] | None) -> list[bytes]:
    """The credential values a request's headers carry: the whole value and the token after a scheme."""
    found: list[bytes] = []
    for name, value in (headers or {}).items():
        if name.lower() not in CREDENTIAL_HEADERS or not value:
            continue
        found.append(value.encode("utf-8", "surrogateescape"))
        _, _, token = value.partition(" ")
        if token.strip():
            found.append(token.strip().encode("utf-8", "surrogateescape"))
    return usable(found)


def usable(secrets: Iterable[bytes | str | None]) -> list[bytes]:
    """Distinct secrets long enough to mask, longest first (a whole header before its token)."""
    unique = {
        secret.encode("utf-8", "surrogateescape") if isinstance(secret, str) else secret
        for secret in secrets
        if secret and len(secret) >= MIN_SECRET_LENGTH
    }
    return sorted(unique, key=len, reverse=True)


def mask(data: bytes, secrets: Iterable[bytes]) -> bytes:
    """`data` with every occurrence of each secret replaced by `*`s of the same length."""
    for secret in secrets:
        if secret in data:
            data = data.replace(secret, b"*" * len(secret))
    return data


def mask_text(text: str, secrets: Iterable[bytes]) -> str:
    """`mask` for a header value or message."""
    masked = mask(text.encode("utf-8", "surrogateescape"), secrets)
    return masked.decode("utf-8", "surrogateescape")


class StreamMasker:
    """`mask` over a body that arrives in chunks, where a secret may straddle two chunks.

    `feed` returns what can be released now and holds back the last `len(longest secret) - 1` bytes
    (they may be the start of a secret); `flush` returns the rest at the end of the body.
    """

    def __init__(self, secrets: Iterable[bytes]) -> None:
        self.secrets = list(secrets)
        self._keep = max((len(secret) for secret in self.secrets), default=1) - 1
        self._pending = b""

    def feed(self, chunk: bytes) -> bytes:
        if not self.secrets:
            return chunk
        data = mask(self._pending + chunk, self.secrets)
        if len(data) <= self._keep:
            self._pending = data
            return b""
        cut = len(data) - self._keep
        self._pending = data[cut:]
        return data[:cut]

    def flush(self) -> bytes:
        rest, self._pending = mask(self._pending, self.secrets), b""
        return rest
