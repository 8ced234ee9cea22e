"""Development signing credentials: a dev root CA and an ES256 (or Ed25519) signing certificate.

`ensure_dev_credentials(directory)` creates them once (and renews the signing certificate under the
same root when it is broken or about to expire), so that `imagegate serve` works with no config and
tests can sign and verify as "trusted" with the dev root as trust anchor. Every file name and
certificate subject says DEVELOPMENT. This module must never be used to make production material,
never weaken a check of `provenance.keys`, and never touch the network.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from provenance.errors import CredentialError
from provenance.keys import check_chain_reaches_anchor, load_signing_credentials
from provenance.settings import ProvenanceSettings

#: Names of the development files; "dev" in every name so nobody mistakes them for production.
DEV_ROOT_CA_FILE = "dev-root-ca.pem"
DEV_ROOT_KEY_FILE = "dev-root-ca-key.pem"
DEV_SIGNING_CHAIN_FILE = "dev-signing-chain.pem"
DEV_SIGNING_KEY_FILE = "dev-signing-key.pem"
DEV_ORGANISATION = "imagegate DEVELOPMENT (not for production)"

#: A signing certificate that expires sooner than this is renewed by `ensure_dev_credentials`.
DEV_RENEW_BEFORE = dt.timedelta(days=7)

#: Algorithms a development signing certificate can have. ES256 is the default (what C2PA
#: certificate authorities issue most); Ed25519 signs faster in c2pa-rs (see README, Benchmarks).
#: The root CA is ECDSA P-256 either way.
DevAlgorithm = Literal["es256", "ed25519"]
DEV_ALGORITHMS: tuple[str, ...] = get_args(DevAlgorithm)


@dataclass(frozen=True, slots=True)
class DevCredentials:
    """Where the development CA and signing credentials live."""

    directory: Path
    root_ca_file: Path
    cert_chain_file: Path
    private_key_file: Path
    created: bool  # True when this call created (or renewed) them
    algorithm: DevAlgorithm = "es256"  # the signing certificate's


@dataclass(frozen=True, slots=True)
class GeneratedChain:
    """PEM texts of a freshly generated root CA and signing certificate (tests, dev)."""

    root_ca_pem: str
    root_key_pem: str
    chain_pem: str  # the signing certificate only: verifiers hold the root as trust anchor
    key_pem: str


def generate_dev_chain(
    *,
    now: dt.datetime | None = None,
    root_valid_for: dt.timedelta = dt.timedelta(days=3650),
    signer_not_before: dt.datetime | None = None,
    signer_not_after: dt.datetime | None = None,
    root: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
    algorithm: DevAlgorithm = "es256",
) -> GeneratedChain:
    """Create a development root CA (unless `root` is given) and a signing certificate.

    `algorithm` is the signing certificate's: an ECDSA P-256 key (es256) or an Ed25519 key.

    The signing certificate carries what C2PA validators require: v3, not a CA, digitalSignature
    key usage (critical), emailProtection EKU, subject and authority key identifiers.
    """
    if algorithm not in DEV_ALGORITHMS:  # before any key is made or file written
        raise CredentialError(
            f"development certificates are {' or '.join(DEV_ALGORITHMS)}, not {algorithm}: "
            f"{algorithm} needs your own certificate (cert_chain_file or IMAGEGATE_SIGNING_CERT)"
        )
    moment = now or dt.datetime.now(dt.UTC)
    if root is None:
        root_key = ec.generate_private_key(ec.SECP256R1())
        root_name = _dev_name("imagegate DEVELOPMENT root CA")
        root_cert = (
            x509.CertificateBuilder()
            .subject_name(root_name)
            .issuer_name(root_name)
            .public_key(root_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(moment - dt.timedelta(minutes=5))
            .not_valid_after(moment + root_valid_for)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), False)
            .sign(root_key, hashes.SHA256())
        )
    else:
        root_cert, root_key = root
    signer_key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey = (
        ed25519.Ed25519PrivateKey.generate()
        if algorithm == "ed25519"
        else ec.generate_private_key(ec.SECP256R1())
    )
    not_before = signer_not_before or (moment - dt.timedelta(minutes=5))
    not_after = signer_not_after or min(
        moment + dt.timedelta(days=365), root_cert.not_valid_after_utc
    )
    signer_cert = (
        x509.CertificateBuilder()
        .subject_name(_dev_name("imagegate DEVELOPMENT signing certificate"))
        .issuer_name(root_cert.subject)
        .public_key(signer_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(signer_key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(_ec_public(root_cert)), False
        )
        .sign(root_key, hashes.SHA256())
    )
    return GeneratedChain(
        root_ca_pem=_cert_pem(root_cert),
        root_key_pem=_key_pem(root_key),
        chain_pem=_cert_pem(signer_cert),
        key_pem=_key_pem(signer_key),
    )


def ensure_dev_credentials(directory: Path, algorithm: DevAlgorithm | None = None) -> DevCredentials:
    """Create development credentials in `directory` on first call; reuse them afterwards.

    The signing certificate is renewed (under the same root CA, so trust anchors stay valid)
    when it is missing, broken, expires within `DEV_RENEW_BEFORE`, or has a key of another
    algorithm than `algorithm` when one is named. Without `algorithm`, a usable certificate of
    either algorithm is kept and a new one is ES256. A missing or broken root CA regenerates
    everything.
    """
    directory = Path(directory)
    paths = DevCredentials(
        directory=directory,
        root_ca_file=directory / DEV_ROOT_CA_FILE,
        cert_chain_file=directory / DEV_SIGNING_CHAIN_FILE,
        private_key_file=directory / DEV_SIGNING_KEY_FILE,
        created=False,
    )
    moment = dt.datetime.now(dt.UTC)
    root = _load_dev_root(directory, moment)
    # An algorithm no development certificate can have is never usable: generate_dev_chain
    # refuses it below, before anything is written.
    found = _usable_dev_algorithm(paths, moment, algorithm) if root is not None else None
    if found is not None:
        return dataclasses.replace(paths, algorithm=found)
    chosen: DevAlgorithm = algorithm or "es256"
    generated = generate_dev_chain(now=moment, root=root, algorithm=chosen)
    directory.mkdir(parents=True, exist_ok=True)
    if root is None:
        _write(paths.root_ca_file, generated.root_ca_pem, private=False)
        _write(directory / DEV_ROOT_KEY_FILE, generated.root_key_pem, private=True)
    _write(paths.private_key_file, generated.key_pem, private=True)
    _write(paths.cert_chain_file, generated.chain_pem, private=False)
    return dataclasses.replace(paths, created=True, algorithm=chosen)


def _load_dev_root(
    directory: Path, moment: dt.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    try:
        cert = x509.load_pem_x509_certificate((directory / DEV_ROOT_CA_FILE).read_bytes())
        key = serialization.load_pem_private_key(
            (directory / DEV_ROOT_KEY_FILE).read_bytes(), password=None
        )
    except (OSError, ValueError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        return None
    if cert.not_valid_after_utc < moment + DEV_RENEW_BEFORE:
        return None
    return cert, key


def _usable_dev_algorithm(
    paths: DevCredentials, moment: dt.datetime, algorithm: DevAlgorithm | None
) -> DevAlgorithm | None:
    """The algorithm of the signing certificate in `paths` if it can be kept, else None."""
    settings = ProvenanceSettings(
        cert_chain_file=paths.cert_chain_file,
        private_key_file=paths.private_key_file,
        algorithm=algorithm,  # when named, a certificate of another algorithm is renewed
    )
    try:
        credentials = load_signing_credentials(settings, now=moment + DEV_RENEW_BEFORE)
        root = x509.load_pem_x509_certificate(paths.root_ca_file.read_bytes())
        check_chain_reaches_anchor(credentials.certificates, [root])
    except (CredentialError, OSError, ValueError):
        return None
    found = credentials.algorithm
    return found if found in DEV_ALGORITHMS else None  # type: ignore[return-value]


def _dev_name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, DEV_ORGANISATION),
        ]
    )


def _ec_public(cert: x509.Certificate) -> ec.EllipticCurvePublicKey:
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise CredentialError("development root CA must have an EC key")
    return key


def _cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _key_pem(key: CertificateIssuerPrivateKeyTypes) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")


def _write(path: Path, text: str, *, private: bool) -> None:
    temporary = path.with_name(path.name + ".tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    descriptor = os.open(temporary, flags, 0o600 if private else 0o644)
    with os.fdopen(descriptor, "w", encoding="ascii") as handle:
        handle.write(text)
    os.replace(temporary, path)
