"""The provenance stage: sign a C2PA manifest for every image imagegate releases.

Signing is done by `provenance.ManifestSigner` (one signer for the process) in worker threads, never
on the event loop, one image per thread concurrently. The manifest states the model and provider,
every moderation decision, the licence decision, the policy version and the audit record id; for
edits, the input images are ingredients; a manifest the provider already embedded (OpenAI's) is
kept as the parent ingredient. With no certificate configured, a development CA and certificate
are created under the data folder on first start and every decision says so.

`provenance.mode` decides where the manifest store goes: embedded in the image (default), beside
it as a sidecar (`.c2pa`, the image bytes are released untouched: for channels that strip
metadata), or both. Sidecars are left in `exchange.notes[SIDECARS_NOTE]`, keyed by the image's
index in `exchange.result.images`; `sidecars(exchange)` reads them. The responder delivers them:
for a URL response it stores each beside its image's asset as `<asset>.c2pa` (`publish_sidecar`)
and hands out a signed URL for it; the asset route names that URL in a `Link: <...>;
rel="c2pa-manifest"` header on the image (C2PA's discovery of external manifests over HTTP), and
OpenAI-shaped responses add `manifest_fields(exchange, index)` to each image: `c2pa_manifest_url`
(URL responses) or `c2pa_manifest_b64` (base64 responses). In embedded mode none of this exists.
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from policies.decisions import Action, Decision
from provenance import (
    CredentialError,
    Ingredient,
    ManifestInfo,
    ManifestSigner,
    ProvenanceSettings,
    ensure_dev_credentials,
    load_signing_credentials,
)

from ..exchange import Exchange
from ..pipeline import BaseStage
from ..settings import ConfigError
from ..stores.assets import SIDECAR_MEDIA_TYPE, AssetStore

log = structlog.get_logger("imagegate.provenance")

CERT_ENV = "IMAGEGATE_SIGNING_CERT"
KEY_ENV = "IMAGEGATE_SIGNING_KEY"

#: `exchange.notes` key of the sidecars: {index in `exchange.result.images`: Sidecar}.
SIDECARS_NOTE = "provenance.sidecars"
#: `exchange.notes` key of the sidecars' signed URLs, once stored for a URL response: {index: URL}.
SIDECAR_URLS_NOTE = "provenance.sidecar_urls"
#: The fields an OpenAI-shaped image item gets when its manifest store is a sidecar.
MANIFEST_URL_FIELD = "c2pa_manifest_url"
MANIFEST_B64_FIELD = "c2pa_manifest_b64"


@dataclass(frozen=True, slots=True)
class Sidecar:
    """The manifest store of one released image, to be served beside it as `<asset>.c2pa`."""

    manifest_id: str
    data: bytes = field(repr=False)
    #: Whether the image also embeds it (mode "both"); the store then binds to the signed image.
    embedded: bool = False
    media_type: str = SIDECAR_MEDIA_TYPE


def sidecars(exchange: Exchange) -> dict[int, Sidecar]:
    """The sidecars the provenance stage left, by index in `exchange.result.images`."""
    found = exchange.notes.get(SIDECARS_NOTE)
    return dict(found) if isinstance(found, dict) else {}


async def publish_sidecar(exchange: Exchange, index: int, assets: AssetStore, asset_name: str) -> str | None:
    """Store the sidecar of image `index` beside its stored asset; its name, or None without one."""
    sidecar = sidecars(exchange).get(index)
    if sidecar is None:
        return None
    return await assets.put_sidecar(asset_name, sidecar.data)


def remember_sidecar_url(exchange: Exchange, index: int, url: str) -> None:
    exchange.notes.setdefault(SIDECAR_URLS_NOTE, {})[index] = url


def manifest_fields(exchange: Exchange, index: int) -> dict[str, str]:
    """What tells the client where the manifest store of image `index` is: the sidecar's signed
    URL in a URL response, the store itself (base64) otherwise; nothing without a sidecar."""
    if exchange.request is not None and exchange.request.response_format == "url":
        url = (exchange.notes.get(SIDECAR_URLS_NOTE) or {}).get(index)
        return {MANIFEST_URL_FIELD: url} if url else {}
    sidecar = sidecars(exchange).get(index)
    return {MANIFEST_B64_FIELD: base64.b64encode(sidecar.data).decode("ascii")} if sidecar else {}


def sidecar_links(exchange: Exchange) -> str | None:
    """A `Link` header value naming the stored sidecars (`remember_sidecar_url`), one per image in
    the order of the images; None without any."""
    urls = exchange.notes.get(SIDECAR_URLS_NOTE) or {}
    if not urls:
        return None
    return ", ".join(f'<{urls[index]}>; rel="c2pa-manifest"' for index in sorted(urls))


def provenance_settings(section: Mapping[str, Any], data_dir: Path, environ: Mapping[str, str] | None = None) -> tuple[ProvenanceSettings, bool]:
    """The signing settings, with PEM secrets from the environment; dev credentials when none.

    Returns the settings and whether they use the development certificate.
    """
    environ = os.environ if environ is None else environ
    data = dict(section)
    if environ.get(CERT_ENV):
        data["cert_chain_pem"] = environ[CERT_ENV]
    if environ.get(KEY_ENV):
        data["private_key_pem"] = environ[KEY_ENV]
    development = not (data.get("cert_chain_pem") or data.get("cert_chain_file"))
    if development:
        try:  # an algorithm no development certificate can have is refused there
            dev = ensure_dev_credentials(data_dir / "dev-keys", data.get("algorithm") or None)
        except CredentialError as exc:
            raise ConfigError(f"invalid provenance settings: {exc}") from None
        data.update(cert_chain_file=dev.cert_chain_file, private_key_file=dev.private_key_file)
        data.setdefault("trust_anchors_file", dev.root_ca_file)
    try:
        return ProvenanceSettings.model_validate(data), development
    except ValueError as exc:
        raise ConfigError(f"invalid provenance settings: {exc}") from exc


class ProvenanceStage(BaseStage):
    name = "provenance"
    safety = True

    def __init__(self, settings: ProvenanceSettings, *, development: bool) -> None:
        self.settings = settings
        self.development = development
        self.signer: ManifestSigner | None = None

    async def start(self) -> None:
        def build() -> ManifestSigner:
            credentials = load_signing_credentials(self.settings)  # refuses expired or broken chains
            signer = ManifestSigner(credentials, self.settings)
            signer.self_test()  # key, chain and timestamp authority checked now, not on a request
            return signer

        self.signer = await asyncio.to_thread(build)
        if self.development:
            log.warning(
                "development_signing_certificate",
                detail="images are signed with imagegate's DEVELOPMENT certificate; configure provenance.cert_chain_file for production",
            )

    async def close(self) -> None:
        if self.signer is not None:
            self.signer.close()

    async def ready(self) -> bool:
        return self.signer is not None

    async def on_response(self, exchange: Exchange) -> None:
        if exchange.stopped or exchange.result is None or exchange.request is None:
            return
        assert self.signer is not None, "the provenance stage was not started"
        request, result = exchange.request, exchange.result
        ingredients = [
            Ingredient(data=image.data, media_type=image.media_type, title=image.filename)
            for image in request.images
        ]
        decisions = [decision.to_dict() for decision in exchange.decisions]
        released = [image for image in result.images if not image.withheld]

        def sign(index: int) -> Any:
            image = released[index]
            verdicts = decisions + ([{"stage": "output_classifier", **image.verdict}] if image.verdict else [])
            info = ManifestInfo(
                model=request.model,
                provider=result.provider,
                verdicts=verdicts,
                policy_version=exchange.policy_version,
                audit_id=exchange.audit_id or "",
                request_id=exchange.request_id,
                licence=exchange.licence,
                ingredients=ingredients,
            )
            return self.signer.sign(image.data, image.media_type, info)  # type: ignore[union-attr]

        signed = await asyncio.gather(*(asyncio.to_thread(sign, index) for index in range(len(released))))
        positions = {id(image): index for index, image in enumerate(result.images)}
        stores: dict[int, Sidecar] = {}
        for image, result_image in zip(released, signed, strict=True):
            image.data = result_image.data  # untouched in sidecar mode
            image.manifest_id = result_image.manifest_id
            image.upstream_manifest = result_image.upstream_manifest
            if result_image.manifest_store is not None:
                stores[positions[id(image)]] = Sidecar(
                    manifest_id=result_image.manifest_id,
                    data=result_image.manifest_store,
                    embedded=result_image.embedded,
                )
        mode = self.settings.mode
        if stores:
            exchange.notes[SIDECARS_NOTE] = stores
        exchange.decide(
            Decision(
                stage=self.name,
                action=Action.ALLOW,
                reason=(
                    f"signed {len(signed)} image(s)"
                    + (" with the DEVELOPMENT certificate" if self.development else "")
                    + ({"sidecar": "; manifests as sidecars, images untouched",
                        "both": "; manifests embedded and as sidecars"}.get(mode, ""))
                    + (f"; kept {sum(s.upstream_manifest for s in signed)} upstream manifest(s) as ingredients"
                       if any(s.upstream_manifest for s in signed) else "")
                ),
                details={
                    "development_certificate": self.development,
                    "manifests": [s.manifest_id for s in signed],
                    "mode": mode,
                },
            )
        )
