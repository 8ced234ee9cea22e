"""Signing images: `ManifestSigner.sign(image, media_type, info)` adds imagegate's C2PA manifest.

One `ManifestSigner` lives for the whole process; it holds one c2pa `Signer` and one `Context`
(settings: no thumbnail, no verify-after-sign, no network fetches) shared by every request
(see `provenance.signer` for why that is thread-safe). Each call builds a fresh, single-use
native Builder, signs fully in memory and returns the new bytes. `sign` blocks for a fraction of a
millisecond to a few milliseconds of CPU: call it from a worker thread, never on the event loop.

Two ways to the same signed file:
- the data-hashed path (`provenance.native` + `provenance.containers`): c2pa-rs sizes and signs
  the manifest store, imagegate hashes the image (SHA-256, the store's container excluded) and
  inserts the container where c2pa-rs would;
- `Builder.sign` (c2pa-rs reads and rewrites the whole image through Python streams), for the
  rest: embedding into an image that already carries C2PA (c2pa-rs replaces that store with
  ours, which holds it as the ingredient), a thumbnail or verify-after-sign, files the header
  walk does not recognise, or a c2pa-python without the native entry points.

`settings.mode` says where the manifest store goes: into the image ("embedded"), beside it
("sidecar": the image bytes are returned untouched, an upstream manifest included, and the
store, bound to all of them by its data hash, is returned as `SignedImage.manifest_store` for a
`.c2pa` file), or both (the embedded store is returned as well). Without the data-hashed path, a
sidecar of an image with an upstream manifest binds to the image with that embedded store
removed (c2pa-rs's no-embed signing), and that is the image returned.

Never strip or overwrite a manifest the image already carries: an image that arrives with C2PA
(OpenAI's do) gets it as the `parentOf` ingredient of imagegate's manifest, and if that cannot be
done, signing fails. This module must never log image bytes or key material.
"""

from __future__ import annotations

import hashlib
import io
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import c2pa

from provenance.containers import ManifestSlot, find_slot
from provenance.errors import SigningError, TimestampAuthorityError
from provenance.keys import SigningCredentials
from provenance.manifest import ManifestInfo, ManifestPlan, plan_manifest
from provenance.media import SIGNABLE_MEDIA_TYPES, has_c2pa_segment, resolve_media_type
from provenance.native import DataHashedSigning, DataHashFor
from provenance.settings import ProvenanceSettings
from provenance.signer import create_c2pa_signer

#: Words in c2pa-rs error messages that mean the timestamp authority failed, not the signature.
_TSA_FAILURE_MARKERS = ("http", "resolver", "timestamp", "time stamp", "service responded", "tsa")


@dataclass(frozen=True, slots=True)
class SignedImage:
    """An image signed with imagegate's manifest: embedded in it, beside it, or both."""

    data: bytes = field(repr=False)  # the image to release (untouched in "sidecar" mode)
    media_type: str
    manifest_id: str  # the active manifest's label (urn:c2pa:...)
    bytes_added: int  # len(data) - len(input): 0 in "sidecar" mode
    upstream_manifest: bool  # the input's own C2PA manifest became a parentOf ingredient
    timestamped: bool  # a timestamp authority countersigned this signature
    #: The manifest store (JUMBF, `application/c2pa`) to serve as `<image>.c2pa`: set in
    #: "sidecar" and "both" modes. In "sidecar" mode it binds to the untouched image; in "both"
    #: it is the store embedded in `data` and binds to `data`.
    manifest_store: bytes | None = field(default=None, repr=False)
    embedded: bool = True  # `data` carries the manifest store


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

    def __init__(
        self,
        credentials: SigningCredentials,
        settings: ProvenanceSettings,
        *,
        data_hashed: bool = True,
    ) -> None:
        """`data_hashed=False` signs everything through `Builder.sign` (benchmarks, comparisons)."""
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
        try:  # the signature space c2pa-rs reserves in a manifest, per Signer (asked once)
            self._reserve_sizes = {
                id(signer): signer.reserve_size()
                for signer in (self._signer, self._fallback_signer)
                if signer is not None
            }
        except c2pa.C2paError as exc:
            raise SigningError(f"the C2PA signer cannot size its signature: {exc}") from None
        # A thumbnail or a read-back needs c2pa-rs to see the image: only Builder.sign does both.
        self._data_hashed = (
            DataHashedSigning.load()
            if data_hashed and not (settings.embed_thumbnail or settings.verify_after_sign)
            else None
        )

    @property
    def credentials(self) -> SigningCredentials:
        return self._credentials

    @property
    def data_hashed_available(self) -> bool:
        """Whether the data-hashed (fast) path is used, for every image whose layout allows it."""
        return self._data_hashed is not None

    def sign(self, image: bytes, media_type: str, info: ManifestInfo) -> SignedImage:
        """Sign a manifest describing `info` for `image` (PNG, JPEG or WebP). Blocking.

        Where the manifest store goes follows `settings.mode` (see the module docstring).
        """
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
            data, store = self._sign_once(self._signer, plan, image, resolved, upstream)
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
                data, store = self._sign_once(
                    self._fallback_signer, plan, image, resolved, upstream
                )
            except c2pa.C2paError as retry_exc:
                raise SigningError(_signing_failure(retry_exc, upstream)) from None
        mode = self._settings.mode
        return SignedImage(
            data=data,
            media_type=resolved,
            manifest_id=plan.label,
            bytes_added=len(data) - len(image),
            upstream_manifest=upstream,
            timestamped=timestamped,
            manifest_store=None if mode == "embedded" else store,
            embedded=mode != "sidecar",
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
        self,
        signer: c2pa.Signer,
        plan: ManifestPlan,
        image: bytes,
        media_type: str,
        upstream: bool,
    ) -> tuple[bytes, bytes]:
        """(the image to release, the manifest store) for one signing attempt."""
        sidecar = self._settings.mode == "sidecar"
        if self._data_hashed is not None:
            if sidecar:  # bound to the untouched image, upstream manifest and all: no exclusion
                digest = hashlib.sha256(image).digest()
                data_hash = _data_hash([], digest)
                return image, self._sign_data_hashed(
                    signer, plan, lambda _: data_hash, exact_size=False
                )
            # An upstream manifest must be replaced by the new store: c2pa-rs does that.
            slot = None if upstream else find_slot(image, media_type)
            if slot is not None:
                store = self._sign_data_hashed(signer, plan, _slot_data_hash(slot, image))
                return slot.embed(image, store), store
        return self._sign_with_builder(signer, plan, image, media_type, sidecar=sidecar)

    def _sign_data_hashed(
        self,
        signer: c2pa.Signer,
        plan: ManifestPlan,
        data_hash_for: DataHashFor,
        *,
        exact_size: bool = True,
    ) -> bytes:
        assert self._data_hashed is not None
        return self._data_hashed.sign(
            self._context,
            signer,
            self._reserve_sizes[id(signer)],
            plan.definition,
            plan.ingredients,
            data_hash_for,
            exact_size=exact_size,
        )

    def _sign_with_builder(
        self,
        signer: c2pa.Signer,
        plan: ManifestPlan,
        image: bytes,
        media_type: str,
        *,
        sidecar: bool,
    ) -> tuple[bytes, bytes]:
        builder = c2pa.Builder(plan.definition, context=self._context)
        try:
            for ingredient in plan.ingredients:
                builder.add_ingredient(
                    ingredient.definition, ingredient.media_type, io.BytesIO(ingredient.data)
                )
            if sidecar:
                # c2pa-rs then writes the image to `output` without any embedded store (an
                # upstream one is inside ours, as the ingredient) and binds the sidecar to that.
                builder.set_no_embed()
            output = io.BytesIO()
            store = builder.sign(signer, media_type, io.BytesIO(image), output)
        finally:
            builder.close()  # sign() closes it already; this covers the failure paths
        return output.getvalue(), store


def _data_hash(exclusions: list[dict[str, int]], digest: bytes) -> dict[str, Any]:
    """A `c2pa.hash.data` assertion as c2pa-rs's DataHash JSON (the hash as a byte list)."""
    return {
        "name": "jumbf manifest",
        "alg": "sha256",
        "exclusions": exclusions,
        "hash": list(digest),
        "pad": [],
    }


def _slot_data_hash(slot: ManifestSlot, image: bytes) -> DataHashFor:
    def data_hash_for(store_size: int) -> dict[str, Any]:
        start, length = slot.exclusion(store_size)
        digest = slot.content_digest(image, store_size)
        return _data_hash([{"start": start, "length": length}], digest)

    return data_hash_for


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
