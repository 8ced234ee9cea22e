"""Reading and verifying Content Credentials: `verify_image(data) -> VerificationReport`.

The report says, in words an ad-ops person can act on: does the image carry credentials, are
they trusted (signed under a given trust anchor), merely valid (intact, signer not trusted) or
invalid, who signed, how the image was made (digital source type, software agent), what imagegate
decided about it (its own assertion), which ingredients it has, and every validation failure with
a plain-English reason next to the c2pa status code.

An image can also be verified together with a sidecar manifest store (`.c2pa`, what imagegate's
"sidecar" and "both" modes produce): `verify_image(image, manifest_store=sidecar)`. The sidecar
then takes the place of any manifest embedded in the image, and its hard binding is checked
against the image bytes as given.

Verification never touches the network: remote manifests and OCSP are not fetched (a verifier
that fetches URLs found in uploaded files is an SSRF hole); such cases are reported instead.
This module must never modify an image and never raise for an invalid image: invalid is a
result; only unreadable input (not an image at all) raises `VerificationError`.
"""

from __future__ import annotations

import functools
import io
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import c2pa

from provenance.containers import looks_like_manifest_store
from provenance.errors import VerificationError
from provenance.manifest import IMAGEGATE_ASSERTION_LABEL
from provenance.media import (
    EXTENSIONS,
    SNIFFABLE_MEDIA_TYPES,
    has_c2pa_segment,
    normalise_media_type,
    sniff_media_type,
    trailing_bytes,
)

ValidationState = Literal["trusted", "valid", "invalid", "none"]

#: Where the manifest store that was checked came from.
ManifestSource = Literal["embedded", "sidecar"]

#: Plain-English meaning of c2pa-rs failure codes (C2PA 2.x section 15, "validation").
FAILURE_MESSAGES: dict[str, str] = {
    "assertion.dataHash.mismatch": (
        "The image bytes changed after signing (pixels edited, or data appended or removed): "
        "they no longer match the hash recorded in the manifest."
    ),
    "assertion.bmffHash.mismatch": (
        "The file's content changed after signing: it no longer matches the recorded hash."
    ),
    "assertion.boxesHash.mismatch": (
        "The file's content changed after signing: it no longer matches the recorded hash."
    ),
    "assertion.collectionHash.mismatch": ("A file of the signed collection changed after signing."),
    "assertion.hashedURI.mismatch": (
        "A statement (assertion) in the manifest was edited after signing: its content no "
        "longer matches the hash the signature covers."
    ),
    "assertion.missing": "The manifest refers to a statement (assertion) that is missing.",
    "assertion.undeclared": "The manifest holds a statement the signed claim does not list.",
    "assertion.multipleHardBindings": "The manifest binds itself to the content more than once.",
    "assertion.action.ingredientMismatch": (
        "An action refers to an ingredient that is missing or does not match."
    ),
    "assertion.action.malformed": "The list of actions is malformed.",
    "assertion.cbor.invalid": "A statement in the manifest cannot be decoded.",
    "assertion.json.invalid": "A statement in the manifest cannot be decoded.",
    "assertion.dataHash.malformed": "The content hash in the manifest is malformed.",
    "claim.malformed": "The manifest is damaged and cannot be parsed.",
    "claim.missing": "The manifest has no claim.",
    "claim.multiple": "The manifest has more than one claim.",
    "claim.hardBindings.missing": (
        "The manifest is not bound to the image bytes (it has no content hash)."
    ),
    "claimSignature.missing": "The manifest is not signed.",
    "claimSignature.mismatch": (
        "The signature does not match the manifest: the manifest was altered after signing."
    ),
    "claimSignature.outsideValidity": (
        "The signature was made outside the signing certificate's validity period."
    ),
    "signingCredential.untrusted": (
        "The signing certificate does not chain to a trusted root (no trust anchor was given, "
        "or this signer is not among them)."
    ),
    "signingCredential.invalid": (
        "The signing certificate is invalid or not fit for C2PA signing."
    ),
    "signingCredential.revoked": "The signing certificate has been revoked.",
    "signingCredential.ocsp.revoked": "The signing certificate has been revoked (OCSP).",
    "signingCredential.expired": (
        "The signing certificate has expired, and no trusted timestamp proves the signature was "
        "made while it was valid."
    ),
    "algorithm.unsupported": "The manifest is signed with an unsupported algorithm.",
    "timeStamp.mismatch": "The signature's timestamp does not match the signature.",
    "timeStamp.untrusted": "The signature's timestamp comes from an untrusted authority.",
    "timeStamp.outsideValidity": "The timestamp lies outside its authority's validity period.",
    "timeStamp.malformed": "The signature's timestamp is malformed.",
    "manifest.inaccessible": (
        "The manifest is stored remotely; imagegate does not fetch it, so it was not checked."
    ),
    "manifest.multipleParents": "The manifest names more than one parent ingredient.",
    "manifest.update.invalid": "The update manifest contains something update manifests may not.",
    "manifest.update.wrongParents": "The update manifest does not have exactly one parent.",
    "ingredient.manifest.missing": "An ingredient's manifest is missing.",
    "ingredient.manifest.mismatch": (
        "An ingredient's manifest does not match the hash recorded for it."
    ),
    "ingredient.claimSignature.mismatch": "An ingredient's signature does not match.",
    "ingredient.claimSignature.missing": "An ingredient's manifest is not signed.",
    "ingredient.hashedURI.mismatch": "An ingredient's recorded data was changed.",
    "general.error": "The manifest could not be validated.",
    "manifest.unreadable": "The image carries C2PA data that cannot be read.",
}

#: Codes that report a weaker trust level rather than tampering; they alone never make "invalid".
TRUST_ONLY_CODES = frozenset({"signingCredential.untrusted", "timeStamp.untrusted"})


@dataclass(frozen=True, slots=True)
class ValidationFailure:
    code: str
    message: str  # plain English
    detail: str | None = None  # the library's own explanation
    url: str | None = None  # which part of the manifest (JUMBF URI)
    ingredient: bool = False  # reported for an ingredient's manifest, not the active one


@dataclass(frozen=True, slots=True)
class SignerReport:
    issuer: str | None
    common_name: str | None
    algorithm: str | None
    signed_at: str | None  # from a trusted timestamp, when the signature has one


@dataclass(frozen=True, slots=True)
class IngredientReport:
    title: str | None
    relationship: str | None
    media_type: str | None
    has_manifest: bool
    active_manifest: str | None


@dataclass(frozen=True, slots=True)
class VerificationReport:
    has_credentials: bool
    state: ValidationState
    media_type: str | None
    active_manifest: str | None = None
    manifest_count: int = 0
    signer: SignerReport | None = None
    generator: str | None = None
    digital_source_type: str | None = None
    software_agent: str | None = None
    actions: list[str] = field(default_factory=list)
    imagegate: dict[str, Any] | None = None
    ingredients: list[IngredientReport] = field(default_factory=list)
    failures: list[ValidationFailure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    manifest_source: ManifestSource | None = None  # None when the image has no credentials

    @property
    def trusted(self) -> bool:
        return self.state == "trusted"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def verify_image(
    data: bytes,
    media_type: str | None = None,
    trust_anchors_pem: str | None = None,
    manifest_store: bytes | None = None,
) -> VerificationReport:
    """Read and validate the C2PA manifest of `data`. Blocking (run it in a worker thread).

    `trust_anchors_pem`: PEM roots to trust; without them the best possible state is "valid".
    `manifest_store`: a sidecar (`.c2pa`) to check the image against instead of what it embeds;
    bytes that are not a C2PA manifest store raise `VerificationError`.
    """
    if manifest_store is not None and not looks_like_manifest_store(manifest_store):
        raise VerificationError("the sidecar is not a C2PA manifest store (JUMBF labelled c2pa)")
    sniffed = sniff_media_type(data)
    declared = normalise_media_type(media_type)
    if sniffed is None and (declared is None or declared in SNIFFABLE_MEDIA_TYPES):
        # The formats we sniff have reliable magic bytes: missing them means "not that image".
        raise VerificationError(
            f"not a recognised image (declared as {declared})"
            if declared
            else "not a recognised image"
        )
    resolved = sniffed or declared or ""
    source: ManifestSource = "embedded" if manifest_store is None else "sidecar"
    context = _reader_context(trust_anchors_pem or "")
    try:
        reader = c2pa.Reader.try_create(resolved, io.BytesIO(data), manifest_store, context)
    except c2pa.C2paError as exc:
        if manifest_store is None and b"c2pa" not in data and b"jumb" not in data:
            raise VerificationError(f"cannot read this {resolved} file: {exc}") from None
        return _unreadable(resolved, exc, source)
    if reader is None:
        return VerificationReport(has_credentials=False, state="none", media_type=resolved)
    with reader:
        store = json.loads(reader.json())
        results = reader.get_validation_results() or {}
        library_state = (reader.get_validation_state() or "").lower()
    report = _report(store, results, library_state, resolved, data, source)
    if manifest_store is not None and has_c2pa_segment(data, resolved):
        report.notes.append(
            "The image also embeds a manifest store; the sidecar was checked instead of it."
        )
    return report


def plain_message(code: str, explanation: str | None = None) -> str:
    """The plain-English sentence for a c2pa status code (falls back to the library's text)."""
    if code in FAILURE_MESSAGES:
        return FAILURE_MESSAGES[code]
    return f"C2PA validation failed ({code})" + (f": {explanation}" if explanation else ".")


def media_type_for_path(name: str) -> str | None:
    """The media type a file name's extension suggests (the bytes still have the last word)."""
    dot = name.rfind(".")
    return EXTENSIONS.get(name[dot:].lower()) if dot >= 0 else None


@functools.lru_cache(maxsize=8)
def _reader_context(trust_anchors_pem: str) -> c2pa.Context:
    config: dict[str, Any] = {
        "verify": {
            "verify_trust": True,
            "remote_manifest_fetch": False,
            "ocsp_fetch": False,
        }
    }
    if trust_anchors_pem:
        if "-----BEGIN CERTIFICATE-----" not in trust_anchors_pem:
            raise VerificationError("trust anchors: no PEM certificate found")
        config["trust"] = {"trust_anchors": trust_anchors_pem}
    try:
        return c2pa.Context(settings=c2pa.Settings.from_dict(config))
    except c2pa.C2paError as exc:
        raise VerificationError(f"trust anchors cannot be used: {exc}") from None


def _unreadable(
    media_type: str, exc: c2pa.C2paError, source: ManifestSource
) -> VerificationReport:
    message = str(exc)
    if "RemoteManifest" in type(exc).__name__ or "remote" in message.lower():
        code = "manifest.inaccessible"
    else:
        code = "manifest.unreadable"
    return VerificationReport(
        has_credentials=True,
        state="invalid",
        media_type=media_type,
        failures=[ValidationFailure(code=code, message=plain_message(code), detail=message)],
        manifest_source=source,
    )


def _report(
    store: dict[str, Any],
    results: dict[str, Any],
    library_state: str,
    media_type: str,
    data: bytes,
    source: ManifestSource,
) -> VerificationReport:
    label = store.get("active_manifest")
    manifests: dict[str, Any] = store.get("manifests") or {}
    manifest: dict[str, Any] = manifests.get(label, {}) if label else {}
    failures = _failures(store, results)
    if library_state == "trusted":
        state: ValidationState = "trusted"
    elif library_state == "valid":
        state = "valid"
    else:
        state = "invalid"
    if state != "invalid" and any(
        f.code not in TRUST_ONLY_CODES and not f.ingredient for f in failures
    ):
        state = "invalid"  # defensive: never call a manifest with a real failure valid
    actions = _actions(manifest)
    lineage = _lineage_actions(manifests, label)  # own actions first, then the parents'
    notes = []
    trailing = trailing_bytes(data, media_type)
    if trailing:
        notes.append(
            f"{trailing} bytes follow the end of the {media_type} image data "
            "(appended after signing, if the content hash does not match)."
        )
    return VerificationReport(
        has_credentials=True,
        state=state,
        media_type=media_type,
        active_manifest=label,
        manifest_count=len(manifests),
        signer=_signer(manifest),
        generator=_generator(manifest),
        digital_source_type=next(
            (a["digitalSourceType"] for a in lineage if a.get("digitalSourceType")), None
        ),
        software_agent=next(
            (_agent_name(a["softwareAgent"]) for a in lineage if a.get("softwareAgent")), None
        ),
        actions=[str(a.get("action")) for a in actions],
        imagegate=_assertion(manifest, IMAGEGATE_ASSERTION_LABEL),
        ingredients=[_ingredient(item) for item in manifest.get("ingredients") or []],
        failures=failures,
        notes=notes,
        manifest_source=source,
    )


def _failures(store: dict[str, Any], results: dict[str, Any]) -> list[ValidationFailure]:
    found: list[ValidationFailure] = []
    seen: set[tuple[str, str | None]] = set()

    def add(entry: dict[str, Any], ingredient: bool) -> None:
        code = str(entry.get("code", "general.error"))
        key = (code, entry.get("url"))
        if key in seen:
            return
        seen.add(key)
        explanation = entry.get("explanation")
        found.append(
            ValidationFailure(
                code=code,
                message=plain_message(code, explanation),
                detail=explanation,
                url=entry.get("url"),
                ingredient=ingredient,
            )
        )

    for entry in (results.get("activeManifest") or {}).get("failure") or []:
        add(entry, False)
    for delta in results.get("ingredientDeltas") or []:
        for entry in (delta.get("validationDeltas") or {}).get("failure") or []:
            add(entry, True)
    if not results:  # older report form (no validation_results): the same codes, failures only
        for entry in store.get("validation_status") or []:
            add(entry, False)
    return found


def _actions(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    collected: list[dict[str, Any]] = []
    for assertion in manifest.get("assertions") or []:
        if str(assertion.get("label", "")).startswith("c2pa.actions"):
            collected.extend((assertion.get("data") or {}).get("actions") or [])
    return collected


def _lineage_actions(manifests: dict[str, Any], label: str | None) -> list[dict[str, Any]]:
    """Actions of the active manifest, then of its parentOf chain (how the image was made).

    A provider's manifest that only says `c2pa.opened` (OpenAI's outer one) states the source
    type in its parent; following the chain finds it. Bounded, and safe against cycles.
    """
    collected: list[dict[str, Any]] = []
    seen: set[str] = set()
    while label and label not in seen and len(seen) < 16:
        seen.add(label)
        manifest = manifests.get(label) or {}
        collected.extend(_actions(manifest))
        parent = next(
            (
                item
                for item in manifest.get("ingredients") or []
                if item.get("relationship") == "parentOf"
            ),
            None,
        )
        label = parent.get("active_manifest") if parent else None
    return collected


def _assertion(manifest: dict[str, Any], label: str) -> dict[str, Any] | None:
    for assertion in manifest.get("assertions") or []:
        if assertion.get("label") == label:
            data = assertion.get("data")
            return data if isinstance(data, dict) else {"value": data}
    return None


def _signer(manifest: dict[str, Any]) -> SignerReport | None:
    info = manifest.get("signature_info")
    if not info:
        return None
    return SignerReport(
        issuer=info.get("issuer"),
        common_name=info.get("common_name"),
        algorithm=info.get("alg"),
        signed_at=info.get("time"),
    )


def _generator(manifest: dict[str, Any]) -> str | None:
    infos = manifest.get("claim_generator_info") or []
    names = [
        " ".join(str(part) for part in (item.get("name"), item.get("version")) if part)
        for item in infos
        if isinstance(item, dict)
    ]
    if names:
        return ", ".join(names)
    generator = manifest.get("claim_generator")
    return str(generator) if generator else None


def _agent_name(agent: Any) -> str:
    if isinstance(agent, dict):
        name = str(agent.get("name", ""))
        provider = agent.get("provider")
        return f"{name} ({provider})" if provider else name
    return str(agent)


def _ingredient(item: dict[str, Any]) -> IngredientReport:
    return IngredientReport(
        title=item.get("title"),
        relationship=item.get("relationship"),
        media_type=item.get("format"),
        has_manifest=bool(item.get("active_manifest") or item.get("manifest_data")),
        active_manifest=item.get("active_manifest"),
    )
