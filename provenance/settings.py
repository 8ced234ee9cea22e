"""Configuration of C2PA signing and verification, as one validated pydantic model.

The proxy's config loader fills `ProvenanceSettings` from the YAML file and the environment
(`IMAGEGATE_SIGNING_CERT` / `IMAGEGATE_SIGNING_KEY` arrive here as `cert_chain_pem` /
`private_key_pem`); this package never reads the environment or the YAML itself.
The defaults are the ones a proxy on the hot path wants: no embedded thumbnail, no
verify-after-sign, no timestamp authority. This module must never touch files or the network:
paths are only validated for shape here and read by `provenance.keys`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

#: Signing algorithms c2pa-rs accepts, by their C2PA / COSE names.
SigningAlgorithm = Literal["es256", "es384", "es512", "ps256", "ps384", "ps512", "ed25519"]

#: What to do when the timestamp authority cannot be reached while signing.
TimestampFallback = Literal["fail", "sign_without_timestamp"]

#: Where the manifest store goes: into the image, beside it (a `.c2pa` sidecar), or both.
ManifestMode = Literal["embedded", "sidecar", "both"]


class ProvenanceSettings(BaseModel):
    """How imagegate signs C2PA manifests and which roots it trusts when verifying."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cert_chain_pem: str | None = Field(
        default=None,
        description="Signing certificate chain as PEM text, end-entity certificate first.",
    )
    private_key_pem: SecretStr | None = Field(
        default=None, description="Private key of the signing certificate as PEM text (PKCS#8)."
    )
    cert_chain_file: Path | None = Field(
        default=None, description="File holding the PEM certificate chain, end-entity first."
    )
    private_key_file: Path | None = Field(
        default=None, description="File holding the PEM private key."
    )
    algorithm: SigningAlgorithm | None = Field(
        default=None,
        description=(
            "Signing algorithm; none: the one the signing certificate's key implies (ECDSA "
            "P-256 es256, Ed25519 ed25519, RSA ps256, ...). A key that cannot sign with a named "
            "algorithm is refused at start-up."
        ),
    )
    tsa_url: str | None = Field(
        default=None, description="RFC 3161 timestamp authority URL; none by default."
    )
    tsa_fallback: TimestampFallback = Field(
        default="fail",
        description=(
            "'fail': an unreachable TSA fails the signature (and the request); "
            "'sign_without_timestamp': sign again without a timestamp."
        ),
    )
    embed_thumbnail: bool = Field(
        default=False,
        description="Embed a thumbnail in the manifest (adds 0.3-2 MB and much time per image).",
    )
    verify_after_sign: bool = Field(
        default=False, description="Read back and validate each signed image (slow, debug only)."
    )
    mode: ManifestMode = Field(
        default="embedded",
        description=(
            "'embedded': the manifest store goes into the image (PNG caBX, JPEG APP11, WebP "
            "C2PA chunk); 'sidecar': the image bytes are left untouched and the store is returned "
            "beside it, to be served as a `.c2pa` file (for channels that strip metadata); "
            "'both': embedded, and the same store is returned as a sidecar too (it binds to the "
            "signed image, not to a copy stripped of its manifest)."
        ),
    )
    claim_generator: str = Field(default="imagegate", min_length=1)
    claim_generator_version: str | None = None
    trust_anchors_file: Path | None = Field(
        default=None, description="PEM bundle of root certificates trusted when verifying."
    )

    @field_validator("tsa_url")
    @classmethod
    def _tsa_url_is_http(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("tsa_url must be an http:// or https:// URL")
        return value or None

    @model_validator(mode="after")
    def _one_source_each(self) -> ProvenanceSettings:
        if self.cert_chain_pem and self.cert_chain_file:
            raise ValueError("give the certificate chain as PEM text or as a file, not both")
        if self.private_key_pem and self.private_key_file:
            raise ValueError("give the private key as PEM text or as a file, not both")
        return self

    @property
    def has_credentials(self) -> bool:
        """Whether a certificate chain is configured at all (otherwise dev credentials apply)."""
        return bool(self.cert_chain_pem or self.cert_chain_file)
