"""Signing images: `ManifestSigner.sign(image, media_type, info)` embeds imagegate's C2PA manifest.

One `ManifestSigner` lives for the whole process; it holds one c2pa `Signer` and one `Context`
(settings: no thumbnail, no verify-after-sign, no network fetches) shared by every request
(see `provenance.signer` for why that is thread-safe). Each call builds a fresh, single-use
`Builder`, signs fully in memory and returns the new bytes. `sign` blocks for a few
milliseconds of CPU: call it from a worker thread, never on the event loop.

Never strip or overwrite a manifest the image already carries: an image that arrives with C2PA
(OpenAI's do) gets it as the `parentOf` ingredient of imagegate's manifest, and if that cannot be
done, signing fails. This module must never log image bytes or key material.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import c2pa

from provenance.errors import SigningError, TimestampAuthorityError
from provenance.keys import SigningCredentials
from provenance.manifest import ManifestInfo, ManifestPlan, plan_manifest
from provenance.media import SIGNABLE_MEDIA_TYPES, has_c2pa_segment, resolve_media_type
from provenance.settings import ProvenanceSettings
from provenance.signer import create_c2pa_signer

#: Words in c2pa-rs error messages that mean the timestamp authority failed, not the signature.
_TSA_FAILURE_MARKERS = ("http", "resolver", "timestamp", "time stamp", "service responded", "tsa")


@dataclass(frozen=True, slots=True)
class SignedImage:
    """An image with imagegate's manifest embedded."""

    data: bytes = field(repr=False)
    media_type: str
    manifest_id: str  # the active manifest's label (urn:c2pa:...)
    bytes_added: int  # len(data) - len(input)
    upstream_manifest: bool  # the input's own C2PA manifest became a parentOf ingredient
    timestamped: bool  # a timestamp authority countersigned this signature


def c2pa_settings(settings: ProvenanceSettings) -> dict[str, Any]:
    """The c2pa-rs settings used for signing: proxy defaults, nothing fetched over the network."""
    return {
        "builder": {"thumbnail": {"enabled": settings.embed_thumbnail}},
        "verify": {
            "verify_after_sign": settings.verify_after_sign,
            "remote_manifest_fetch": False,
            "ocsp_fetch": False,
        },
    }


class ManifestSigner:
    """Signs images with one shared c2pa `Signer`; safe to call from several threads at once."""

    def __init__(self, credentials: SigningCredentials, settings: ProvenanceSettings) -> None:
        self._settings = settings
        self._credentials = credentials
        self._signer = create_c2pa_signer(credentials, tsa_url=settings.tsa_url)
        self._fallback_signer: c2pa.Signer | None = None
        if settings.tsa_url and settings.tsa_fallback == "sign_without_timestamp":
            self._fallback_signer = create_c2pa_signer(credentials, tsa_url=None)
        try:
            self._context = c2pa.Context(settings=c2pa.Settings.from_dict(c2pa_settings(settings)))
        except c2pa.C2paError as exc:
            raise SigningError(f"c2pa settings rejected: {exc}") from None

    @property
    def credentials(self) -> SigningCredentials:
        return self._credentials

    def sign(self, image: bytes, media_type: str, info: ManifestInfo) -> SignedImage:
        """Embed a manifest describing `info` into `image` (PNG, JPEG or WebP). Blocking."""
        resolved = resolve_media_type(image, media_type)
        if resolved not in SIGNABLE_MEDIA_TYPES:
            raise SigningError(
                f"cannot sign {resolved or media_type or 'unknown'} images "
                f"(signable: {', '.join(sorted(SIGNABLE_MEDIA_TYPES))})"
            )
        upstream = _carries_c2pa(image, resolved)
        plan = plan_manifest(info, self._settings, upstream=(image, resolved) if upstream else None)
        timestamped = self._settings.tsa_url is not None
        try:
            data = self._sign_once(self._signer, plan, image, resolved)
        except c2pa.C2paError as exc:
            if not (timestamped and _is_tsa_failure(exc)):
                raise SigningError(_signing_failure(exc, upstream)) from None
            if self._fallback_signer is None:
                raise TimestampAuthorityError(
                    f"timestamp authority {self._settings.tsa_url} failed, image not signed "
                    f"(tsa_fallback is 'fail'): {exc}"
                ) from None
            timestamped = False
            try:
                data = self._sign_once(self._fallback_signer, plan, image, resolved)
            except c2pa.C2paError as retry_exc:
                raise SigningError(_signing_failure(retry_exc, upstream)) from None
        return SignedImage(
            data=data,
            media_type=resolved,
            manifest_id=plan.label,
            bytes_added=len(data) - len(image),
            upstream_manifest=upstream,
            timestamped=timestamped,
        )

    def self_test(self) -> SignedImage:
        """Sign a 1x1 PNG: proves at start-up that key, chain and TSA work (raises otherwise)."""
        info = ManifestInfo(
            model="self-test",
            provider="imagegate",
            verdicts=[],
            policy_version="self-test",
            audit_id="self-test",
            request_id="self-test",
        )
        return self.sign(tiny_png(), "image/png", info)

    def close(self) -> None:
        """Free the native signer(s) and context; the object is unusable afterwards."""
        for resource in (self._signer, self._fallback_signer, self._context):
            if resource is not None:
                resource.close()

    def _sign_once(
        self, signer: c2pa.Signer, plan: ManifestPlan, image: bytes, media_type: str
    ) -> bytes:
        builder = c2pa.Builder(plan.definition, context=self._context)
        try:
            for ingredient in plan.ingredients:
                builder.add_ingredient(
                    ingredient.definition, ingredient.media_type, io.BytesIO(ingredient.data)
                )
            output = io.BytesIO()
            builder.sign(signer, media_type, io.BytesIO(image), output)
        finally:
            builder.close()  # sign() closes it already; this covers the failure paths
        return output.getvalue()


def _carries_c2pa(image: bytes, media_type: str) -> bool:
    """Whether the image holds a C2PA manifest store (then it must become an ingredient).

    A header walk finds the format's C2PA container (PNG caBX, JPEG APP11, WebP C2PA) without
    touching the pixel data; only images that have one are read by c2pa-rs. An unreadable store
    still counts: it is attached as an ingredient (c2pa-rs records why it is broken) rather than
    overwritten.
    """
    if not has_c2pa_segment(image, media_type):
        return False
    try:
        reader = c2pa.Reader.try_create(media_type, io.BytesIO(image))
    except c2pa.C2paError:
        return True
    if reader is None:
        return False
    reader.close()
    return True


def _is_tsa_failure(exc: c2pa.C2paError) -> bool:
    message = str(exc).lower()
    return message.startswith("signature") and any(m in message for m in _TSA_FAILURE_MARKERS)


def _signing_failure(exc: c2pa.C2paError, upstream: bool) -> str:
    if upstream:
        return (
            "signing failed and the image's existing C2PA manifest was left untouched "
            f"(it could not be kept as an ingredient): {exc}"
        )
    return f"signing failed: {exc}"


def tiny_png(rgb: tuple[int, int, int] = (128, 128, 128)) -> bytes:
    """A valid 1x1 RGB PNG, built without an imaging library."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload))
            + kind
            + payload
            + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00" + bytes(rgb))
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )
