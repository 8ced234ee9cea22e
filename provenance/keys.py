"""Signing certificates: loading a chain and key for C2PA signing, refusing bad ones.

Start-up calls `load_signing_credentials(settings)`; it returns `SigningCredentials` only for a
chain that is usable for C2PA today (every certificate within its validity period, each one
issued by the next, the end-entity certificate fit for C2PA claim signing, the private key
matching it), and otherwise raises a `CredentialError` naming the certificate and the fault.
Development credentials (`ensure_dev_credentials`) live in `provenance.dev_credentials`.

This module must never log or return private key material in an error message, never weaken a
check because the material is "only" development material, and never touch the network.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from pydantic import SecretStr

from provenance.errors import CredentialError
from provenance.settings import ProvenanceSettings, SigningAlgorithm

#: Extended key usages C2PA accepts for a claim signer (C2PA 2.x, section 14.5.1).
C2PA_SIGNING_EKUS = frozenset(
    {
        ExtendedKeyUsageOID.EMAIL_PROTECTION,
        x509.ObjectIdentifier("1.3.6.1.4.1.311.10.3.12"),  # Microsoft document signing
        x509.ObjectIdentifier("1.3.6.1.5.5.7.3.36"),  # id-kp-documentSigning (RFC 9336)
    }
)

#: A custom signer for a KMS or HSM: gets the bytes to sign, returns the raw signature
#: (for ECDSA the IEEE P1363 r||s form, not DER; see `provenance.signer.der_to_p1363`).
SigningCallback = Callable[[bytes], bytes]


@dataclass(frozen=True, slots=True)
class SigningCredentials:
    """A validated certificate chain plus the means to sign: a private key or a callback."""

    cert_chain_pem: str
    algorithm: SigningAlgorithm
    certificates: tuple[x509.Certificate, ...]
    private_key_pem: SecretStr | None = field(default=None, repr=False)
    signing_callback: SigningCallback | None = field(default=None, repr=False)

    @property
    def signer_certificate(self) -> x509.Certificate:
        return self.certificates[0]

    @property
    def not_after(self) -> dt.datetime:
        """When the first certificate of the chain expires (the chain's own end of life)."""
        return min(cert.not_valid_after_utc for cert in self.certificates)

    def describe(self) -> str:
        """One line for start-up logs: subject, issuer and expiry, never key material."""
        cert = self.signer_certificate
        return (
            f"{cert.subject.rfc4514_string()} issued by {cert.issuer.rfc4514_string()}, "
            f"valid until {self.not_after.isoformat()}"
        )


# ---------------------------------------------------------------------------------------------
# Loading and validation


def load_signing_credentials(
    settings: ProvenanceSettings,
    *,
    signing_callback: SigningCallback | None = None,
    now: dt.datetime | None = None,
) -> SigningCredentials:
    """Load and validate the configured chain and key; raise `CredentialError` on any fault.

    With `signing_callback` (a KMS or HSM), no private key is needed: the callback signs.
    """
    chain_pem = _read_text(settings.cert_chain_pem, settings.cert_chain_file, "certificate chain")
    if chain_pem is None:
        raise CredentialError(
            "no signing certificate chain configured (cert_chain_pem / cert_chain_file, "
            "or IMAGEGATE_SIGNING_CERT)"
        )
    key_text = None
    if settings.private_key_pem is not None:
        key_text = settings.private_key_pem.get_secret_value()
    key_pem = _read_text(key_text, settings.private_key_file, "private key")
    if key_pem is None and signing_callback is None:
        raise CredentialError(
            "no private key configured (private_key_pem / private_key_file, or "
            "IMAGEGATE_SIGNING_KEY) and no signing callback given"
        )
    certificates = parse_certificate_chain(chain_pem)
    algorithm = settings.algorithm or algorithm_of(certificates[0])
    validate_chain(certificates, algorithm, now=now)
    if settings.trust_anchors_file is not None:
        anchors = parse_certificate_chain(
            _read_file(settings.trust_anchors_file, "trust anchors"), what="trust anchors"
        )
        check_chain_reaches_anchor(certificates, anchors)
    if key_pem is not None:
        check_key_matches(key_pem, certificates[0])
    return SigningCredentials(
        cert_chain_pem=chain_pem,
        algorithm=algorithm,
        certificates=tuple(certificates),
        private_key_pem=SecretStr(key_pem) if key_pem is not None else None,
        signing_callback=signing_callback,
    )


def parse_certificate_chain(pem: str, *, what: str = "certificate chain") -> list[x509.Certificate]:
    """Parse PEM certificates in order; raise `CredentialError` if there are none or one is broken."""
    if "-----BEGIN CERTIFICATE-----" not in pem:
        raise CredentialError(f"{what}: no PEM certificate found")
    try:
        certificates = x509.load_pem_x509_certificates(pem.encode())
    except ValueError as exc:
        raise CredentialError(f"{what}: a certificate cannot be parsed ({exc})") from None
    return certificates


def validate_chain(
    certificates: Sequence[x509.Certificate],
    algorithm: SigningAlgorithm,
    *,
    now: dt.datetime | None = None,
) -> None:
    """Refuse a chain that c2pa-rs validators would reject, naming the culprit certificate."""
    moment = now or dt.datetime.now(dt.UTC)
    if not certificates:
        raise CredentialError("certificate chain is empty")
    for position, cert in enumerate(certificates):
        label = _label(cert, position)
        if cert.not_valid_after_utc < moment:
            raise CredentialError(f"{label} expired on {cert.not_valid_after_utc.isoformat()}")
        if cert.not_valid_before_utc > moment:
            raise CredentialError(
                f"{label} is not valid yet (valid from {cert.not_valid_before_utc.isoformat()})"
            )
        if cert.version is not x509.Version.v3:
            raise CredentialError(f"{label} is not an X.509 v3 certificate")
    for position, (cert, issuer) in enumerate(itertools.pairwise(certificates)):
        label = _label(cert, position)
        if cert.issuer != issuer.subject:
            raise CredentialError(
                f"broken chain: {label} names issuer {cert.issuer.rfc4514_string()!r} but the "
                f"next certificate is {issuer.subject.rfc4514_string()!r}"
            )
        try:
            cert.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            raise CredentialError(
                f"broken chain: {label} is not signed by the next certificate "
                f"{issuer.subject.rfc4514_string()!r}"
            ) from None
        if not _is_ca(issuer):
            raise CredentialError(
                f"broken chain: {issuer.subject.rfc4514_string()!r} issues {label} but is not a CA"
            )
    _check_end_entity(certificates[0], algorithm)


def check_chain_reaches_anchor(
    certificates: Sequence[x509.Certificate], anchors: Sequence[x509.Certificate]
) -> None:
    """Raise `CredentialError` unless the top of the chain is, or is issued by, a trust anchor."""
    top = certificates[-1]
    for anchor in anchors:
        if top == anchor:
            return
        if top.issuer == anchor.subject:
            try:
                top.verify_directly_issued_by(anchor)
            except (ValueError, TypeError, InvalidSignature):
                continue
            return
    raise CredentialError(
        f"the chain ends at {top.subject.rfc4514_string()!r}, which no configured trust anchor "
        "issued: verifiers using those anchors would report the signature untrusted"
    )


def check_key_matches(private_key_pem: str, certificate: x509.Certificate) -> None:
    """Raise `CredentialError` unless the private key belongs to the signing certificate."""
    try:
        key = serialization.load_pem_private_key(private_key_pem.encode(), password=None)
    except (ValueError, TypeError):
        raise CredentialError(
            "private key cannot be read (expected an unencrypted PEM private key)"
        ) from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    encoding = serialization.Encoding.DER
    if key.public_key().public_bytes(encoding, public) != certificate.public_key().public_bytes(
        encoding, public
    ):
        raise CredentialError(
            f"private key does not match the signing certificate "
            f"{certificate.subject.rfc4514_string()!r}"
        )


def _check_end_entity(cert: x509.Certificate, algorithm: SigningAlgorithm) -> None:
    label = _label(cert, 0)
    if _is_ca(cert):
        raise CredentialError(f"{label} is a CA certificate; C2PA needs an end-entity signer")
    if cert.issuer == cert.subject:
        raise CredentialError(f"{label} is self-signed; C2PA needs a CA-issued signer")
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        raise CredentialError(f"{label} has no key usage extension") from None
    if not usage.digital_signature:
        raise CredentialError(f"{label} key usage lacks digitalSignature")
    try:
        ekus = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        raise CredentialError(
            f"{label} has no extended key usage; C2PA needs emailProtection or documentSigning"
        ) from None
    if not C2PA_SIGNING_EKUS.intersection(ekus):
        raise CredentialError(
            f"{label} extended key usage allows neither emailProtection nor documentSigning"
        )
    try:
        cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    except x509.ExtensionNotFound:
        raise CredentialError(f"{label} has no authority key identifier (AKI)") from None
    _check_algorithm(cert, algorithm, label)


#: The key each signing algorithm needs: its type and, for ECDSA, its curve. In the order
#: `algorithm_of` tries them: an RSA key implies ps256, the first RSA entry.
_KEY_FOR_ALGORITHM: dict[SigningAlgorithm, tuple[type, str | None]] = {
    "es256": (ec.EllipticCurvePublicKey, "secp256r1"),
    "es384": (ec.EllipticCurvePublicKey, "secp384r1"),
    "es512": (ec.EllipticCurvePublicKey, "secp521r1"),
    "ps256": (rsa.RSAPublicKey, None),
    "ps384": (rsa.RSAPublicKey, None),
    "ps512": (rsa.RSAPublicKey, None),
    "ed25519": (ed25519.Ed25519PublicKey, None),
}


def _key_fits(key: object, algorithm: SigningAlgorithm) -> bool:
    key_type, curve = _KEY_FOR_ALGORITHM[algorithm]
    return isinstance(key, key_type) and (curve is None or key.curve.name == curve)  # type: ignore[attr-defined]


def algorithm_of(cert: x509.Certificate) -> SigningAlgorithm:
    """The signing algorithm a certificate's key implies, when the settings name none.

    ECDSA keys by their curve (P-256 es256, P-384 es384, P-521 es512), Ed25519 keys ed25519 and
    RSA keys ps256 (C2PA allows RSA only with PSS padding; set ps384 or ps512 explicitly).
    """
    key = cert.public_key()
    for algorithm in _KEY_FOR_ALGORITHM:
        if _key_fits(key, algorithm):
            return algorithm
    raise CredentialError(
        f"{_label(cert, 0)} has a key C2PA cannot sign with "
        "(ECDSA P-256/P-384/P-521, Ed25519 or RSA are needed)"
    )


def _check_algorithm(cert: x509.Certificate, algorithm: SigningAlgorithm, label: str) -> None:
    if not _key_fits(cert.public_key(), algorithm):
        raise CredentialError(f"{label} has a key that cannot sign with algorithm {algorithm}")


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _label(cert: x509.Certificate, position: int) -> str:
    role = "signing certificate" if position == 0 else f"chain certificate #{position}"
    return f"{role} {cert.subject.rfc4514_string()!r}"


def _read_text(text: str | None, path: Path | None, what: str) -> str | None:
    if text:
        return text
    if path is not None:
        return _read_file(path, what)
    return None


def _read_file(path: Path, what: str) -> str:
    try:
        return Path(path).read_text(encoding="ascii")
    except FileNotFoundError:
        raise CredentialError(f"{what} file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CredentialError(f"{what} file cannot be read: {path} ({exc})") from None
