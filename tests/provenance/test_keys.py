"""Development credentials and the start-up checks on a signing chain."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import SecretStr, ValidationError

from provenance import (
    CredentialError,
    ProvenanceSettings,
    ensure_dev_credentials,
    load_signing_credentials,
)
from provenance.dev_credentials import generate_dev_chain
from provenance.keys import algorithm_of

NOW = dt.datetime.now(dt.UTC)


def settings_for(chain_pem: str, key_pem: str, **extra: object) -> ProvenanceSettings:
    return ProvenanceSettings(
        cert_chain_pem=chain_pem,
        private_key_pem=SecretStr(key_pem),
        **extra,  # type: ignore[arg-type]
    )


def test_dev_credentials_are_created_once_then_reused(tmp_path: Path) -> None:
    first = ensure_dev_credentials(tmp_path)
    assert first.created
    assert first.root_ca_file.name == "dev-root-ca.pem"
    assert first.cert_chain_file.name == "dev-signing-chain.pem"
    assert first.private_key_file.name == "dev-signing-key.pem"
    assert os.stat(first.private_key_file).st_mode & 0o077 == 0
    chain_before = first.cert_chain_file.read_bytes()

    second = ensure_dev_credentials(tmp_path)
    assert not second.created
    assert second.cert_chain_file.read_bytes() == chain_before


def test_dev_signing_certificate_has_the_extensions_c2pa_requires(tmp_path: Path) -> None:
    paths = ensure_dev_credentials(tmp_path)
    (signer_cert,) = x509.load_pem_x509_certificates(paths.cert_chain_file.read_bytes())
    root = x509.load_pem_x509_certificate(paths.root_ca_file.read_bytes())
    assert signer_cert.issuer == root.subject
    for cert in (signer_cert, root):
        common_name = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        assert "imagegate DEVELOPMENT" in str(common_name)
    extensions = signer_cert.extensions
    assert (
        ExtendedKeyUsageOID.EMAIL_PROTECTION
        in extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    )
    usage = extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature
    assert not extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    aki = extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    root_ski = root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == root_ski.digest
    assert extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_dev_credentials_load_and_describe(tmp_path: Path) -> None:
    paths = ensure_dev_credentials(tmp_path)
    settings = ProvenanceSettings(
        cert_chain_file=paths.cert_chain_file,
        private_key_file=paths.private_key_file,
        trust_anchors_file=paths.root_ca_file,
    )
    credentials = load_signing_credentials(settings)
    assert credentials.algorithm == "es256"
    assert "imagegate DEVELOPMENT signing certificate" in credentials.describe()
    assert "PRIVATE" not in repr(credentials)


def test_expired_certificate_is_refused() -> None:
    chain = generate_dev_chain(
        signer_not_before=NOW - dt.timedelta(days=30),
        signer_not_after=NOW - dt.timedelta(days=1),
    )
    with pytest.raises(CredentialError, match="signing certificate .* expired on"):
        load_signing_credentials(settings_for(chain.chain_pem, chain.key_pem))


def test_not_yet_valid_certificate_is_refused() -> None:
    chain = generate_dev_chain(
        signer_not_before=NOW + dt.timedelta(days=1),
        signer_not_after=NOW + dt.timedelta(days=30),
    )
    with pytest.raises(CredentialError, match="not valid yet"):
        load_signing_credentials(settings_for(chain.chain_pem, chain.key_pem))


def test_chain_with_a_foreign_issuer_is_refused() -> None:
    mine = generate_dev_chain()
    other = generate_dev_chain()
    broken = mine.chain_pem + other.root_ca_pem  # same subject names, different root key
    with pytest.raises(CredentialError, match="broken chain"):
        load_signing_credentials(settings_for(broken, mine.key_pem))


def test_key_that_does_not_match_the_certificate_is_refused() -> None:
    chain = generate_dev_chain()
    other = generate_dev_chain()
    with pytest.raises(CredentialError, match="does not match"):
        load_signing_credentials(settings_for(chain.chain_pem, other.key_pem))


def test_garbage_and_missing_material_is_refused(tmp_path: Path) -> None:
    chain = generate_dev_chain()
    with pytest.raises(CredentialError, match="no PEM certificate"):
        load_signing_credentials(settings_for("not a certificate", chain.key_pem))
    with pytest.raises(CredentialError, match="private key cannot be read"):
        load_signing_credentials(settings_for(chain.chain_pem, "-----BEGIN PRIVATE KEY-----\nxx"))
    with pytest.raises(CredentialError, match="no signing certificate chain"):
        load_signing_credentials(ProvenanceSettings())
    with pytest.raises(CredentialError, match="file not found"):
        load_signing_credentials(
            ProvenanceSettings(
                cert_chain_file=tmp_path / "missing.pem", private_key_file=tmp_path / "k.pem"
            )
        )


def test_self_signed_or_ca_signer_is_refused() -> None:
    chain = generate_dev_chain()
    with pytest.raises(CredentialError, match="CA certificate"):
        load_signing_credentials(settings_for(chain.root_ca_pem, chain.root_key_pem))


def test_wrong_algorithm_for_the_key_is_refused() -> None:
    chain = generate_dev_chain()
    with pytest.raises(CredentialError, match="cannot sign with algorithm es384"):
        load_signing_credentials(settings_for(chain.chain_pem, chain.key_pem, algorithm="es384"))


def test_chain_not_under_the_configured_trust_anchor_is_refused(tmp_path: Path) -> None:
    chain = generate_dev_chain()
    anchors = tmp_path / "anchors.pem"
    anchors.write_text(generate_dev_chain().root_ca_pem)
    with pytest.raises(CredentialError, match="no configured trust anchor"):
        load_signing_credentials(
            settings_for(chain.chain_pem, chain.key_pem, trust_anchors_file=anchors)
        )


def test_settings_validation() -> None:
    with pytest.raises(ValidationError):
        ProvenanceSettings(tsa_url="ftp://tsa.example")
    with pytest.raises(ValidationError):
        ProvenanceSettings(cert_chain_pem="x", cert_chain_file=Path("y"))
    with pytest.raises(ValidationError):
        ProvenanceSettings(unknown_field=1)  # type: ignore[call-arg]
    defaults = ProvenanceSettings()
    assert not defaults.embed_thumbnail and not defaults.verify_after_sign
    assert defaults.algorithm is None and defaults.tsa_fallback == "fail"  # from the certificate


def test_dev_signing_certificate_is_renewed_under_the_same_root(tmp_path: Path) -> None:
    first = ensure_dev_credentials(tmp_path)
    root_before = first.root_ca_file.read_bytes()
    first.cert_chain_file.write_text("broken")
    renewed = ensure_dev_credentials(tmp_path)
    assert renewed.created
    assert renewed.root_ca_file.read_bytes() == root_before
    load_signing_credentials(
        ProvenanceSettings(
            cert_chain_file=renewed.cert_chain_file,
            private_key_file=renewed.private_key_file,
            trust_anchors_file=renewed.root_ca_file,
        )
    )


def test_ed25519_dev_certificate_has_the_same_extensions_and_loads_as_ed25519(tmp_path: Path) -> None:
    paths = ensure_dev_credentials(tmp_path, "ed25519")
    assert paths.created and paths.algorithm == "ed25519"
    (signer_cert,) = x509.load_pem_x509_certificates(paths.cert_chain_file.read_bytes())
    assert isinstance(signer_cert.public_key(), ed25519.Ed25519PublicKey)
    extensions = signer_cert.extensions
    assert ExtendedKeyUsageOID.EMAIL_PROTECTION in extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    root = x509.load_pem_x509_certificate(paths.root_ca_file.read_bytes())
    root_ski = root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier == root_ski.digest
    assert isinstance(root.public_key(), ec.EllipticCurvePublicKey)  # the root stays ECDSA P-256
    credentials = load_signing_credentials(
        ProvenanceSettings(
            cert_chain_file=paths.cert_chain_file,
            private_key_file=paths.private_key_file,
            trust_anchors_file=paths.root_ca_file,
        )
    )
    assert credentials.algorithm == "ed25519"  # inferred from the key: nothing configured


def test_dev_credentials_keep_their_algorithm_unless_another_is_named(tmp_path: Path) -> None:
    first = ensure_dev_credentials(tmp_path, "ed25519")
    root_before = first.root_ca_file.read_bytes()
    chain_before = first.cert_chain_file.read_bytes()

    kept = ensure_dev_credentials(tmp_path)  # none named: the valid Ed25519 certificate is kept
    assert not kept.created and kept.algorithm == "ed25519"
    assert kept.cert_chain_file.read_bytes() == chain_before

    switched = ensure_dev_credentials(tmp_path, "es256")  # named: replaced under the same root
    assert switched.created and switched.algorithm == "es256"
    assert switched.root_ca_file.read_bytes() == root_before
    (signer_cert,) = x509.load_pem_x509_certificates(switched.cert_chain_file.read_bytes())
    assert isinstance(signer_cert.public_key(), ec.EllipticCurvePublicKey)
    assert not ensure_dev_credentials(tmp_path, "es256").created


def test_dev_credentials_refuse_other_algorithms_before_writing(tmp_path: Path) -> None:
    with pytest.raises(CredentialError, match="es256 or ed25519, not ps256"):
        ensure_dev_credentials(tmp_path / "keys", "ps256")  # type: ignore[arg-type]
    assert not (tmp_path / "keys").exists()


def test_algorithm_is_inferred_from_the_certificate_key() -> None:
    es256 = generate_dev_chain()
    ed = generate_dev_chain(algorithm="ed25519")
    assert algorithm_of(x509.load_pem_x509_certificate(es256.chain_pem.encode())) == "es256"
    assert algorithm_of(x509.load_pem_x509_certificate(ed.chain_pem.encode())) == "ed25519"
    # Other keys: by curve, RSA as ps256, and a curve C2PA has no algorithm for refused.
    for key, expected in ((ec.generate_private_key(ec.SECP384R1()), "es384"),
                          (ec.generate_private_key(ec.SECP521R1()), "es512"),
                          (rsa.generate_private_key(public_exponent=65537, key_size=2048), "ps256")):
        assert algorithm_of(_self_signed(key)) == expected
    with pytest.raises(CredentialError, match="has a key C2PA cannot sign with"):
        algorithm_of(_self_signed(ec.generate_private_key(ec.SECP256K1())))
    assert load_signing_credentials(settings_for(ed.chain_pem, ed.key_pem)).algorithm == "ed25519"
    # A named algorithm is still checked against the key.
    with pytest.raises(CredentialError, match="cannot sign with algorithm es256"):
        load_signing_credentials(settings_for(ed.chain_pem, ed.key_pem, algorithm="es256"))
    with pytest.raises(CredentialError, match="cannot sign with algorithm ed25519"):
        load_signing_credentials(settings_for(es256.chain_pem, es256.key_pem, algorithm="ed25519"))


def _self_signed(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> x509.Certificate:
    """A bare self-signed certificate for `key` (only its public key matters to algorithm_of)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "key test")])
    moment = dt.datetime.now(dt.UTC)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(moment)
            .not_valid_after(moment + dt.timedelta(days=1)).sign(key, hashes.SHA256()))
