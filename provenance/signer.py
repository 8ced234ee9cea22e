"""Turning validated `SigningCredentials` into a c2pa-python `Signer`, local key or callback.

Two ways to sign:
- a local private key (PEM): c2pa-rs signs natively (`Signer.from_info`), the fastest path;
- a `SigningCallback` (KMS, HSM, remote signer): c2pa-rs hands over the bytes to be signed and
  takes back the raw signature (`Signer.from_callback`). For ECDSA the callback must return the
  IEEE P1363 form (r || s, fixed width), not DER: `der_to_p1363` converts what most KMS APIs and
  `cryptography` return. `local_key_callback` is a reference implementation of the interface.

Thread-safety (checked in c2pa-python 0.38.1 / c2pa-rs 0.91.3): `Builder.sign(signer, ...)` holds
only a *shared* reservation on the Signer (`ManagedResource._native_call`), ctypes releases the
GIL during the native call, and the native signer is a `Send + Sync` boxed signer whose `sign`
takes `&self`; one Signer therefore serves concurrent threads without a lock (the tests sign from
several threads at once and verify every result). A callback runs under the GIL in whichever
thread is signing, so it must itself be thread-safe.

This module must never log, copy into an error message, or keep beyond the Signer's creation the
private key text.
"""

from __future__ import annotations

import c2pa
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from provenance.errors import CredentialError, SigningError
from provenance.keys import SigningCallback, SigningCredentials
from provenance.settings import SigningAlgorithm

ALGORITHMS: dict[str, c2pa.C2paSigningAlg] = {
    "es256": c2pa.C2paSigningAlg.ES256,
    "es384": c2pa.C2paSigningAlg.ES384,
    "es512": c2pa.C2paSigningAlg.ES512,
    "ps256": c2pa.C2paSigningAlg.PS256,
    "ps384": c2pa.C2paSigningAlg.PS384,
    "ps512": c2pa.C2paSigningAlg.PS512,
    "ed25519": c2pa.C2paSigningAlg.ED25519,
}

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "es256": hashes.SHA256,
    "es384": hashes.SHA384,
    "es512": hashes.SHA512,
    "ps256": hashes.SHA256,
    "ps384": hashes.SHA384,
    "ps512": hashes.SHA512,
}


def create_c2pa_signer(credentials: SigningCredentials, *, tsa_url: str | None) -> c2pa.Signer:
    """A c2pa `Signer` for these credentials, asking `tsa_url` for a timestamp when given."""
    algorithm = ALGORITHMS[credentials.algorithm]
    try:
        if credentials.signing_callback is not None:
            return c2pa.Signer.from_callback(
                credentials.signing_callback, algorithm, credentials.cert_chain_pem, tsa_url
            )
        if credentials.private_key_pem is None:
            raise CredentialError("neither a private key nor a signing callback is configured")
        info = c2pa.C2paSignerInfo(
            credentials.algorithm.encode("ascii"),
            credentials.cert_chain_pem.encode("ascii"),
            credentials.private_key_pem.get_secret_value().encode("ascii"),
            tsa_url.encode("ascii") if tsa_url else None,
        )
        return c2pa.Signer.from_info(info)
    except c2pa.C2paError as exc:
        # c2pa's messages name the failing part, never the key itself.
        raise SigningError(f"the C2PA signer cannot be created: {exc}") from None


def der_to_p1363(der_signature: bytes, key_size_bytes: int) -> bytes:
    """Convert a DER ECDSA signature to the fixed-width r || s form COSE (and c2pa-rs) expect."""
    r, s = decode_dss_signature(der_signature)
    return r.to_bytes(key_size_bytes, "big") + s.to_bytes(key_size_bytes, "big")


def local_key_callback(private_key_pem: str, algorithm: SigningAlgorithm) -> SigningCallback:
    """A `SigningCallback` signing with a local key: the reference for KMS/HSM implementations."""
    try:
        key = serialization.load_pem_private_key(private_key_pem.encode(), password=None)
    except (ValueError, TypeError):
        raise CredentialError("private key cannot be read (expected unencrypted PEM)") from None
    if algorithm == "ed25519":
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise CredentialError("algorithm ed25519 needs an Ed25519 key")
        return key.sign
    hash_type = _HASHES[algorithm]
    if algorithm.startswith("es"):
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CredentialError(f"algorithm {algorithm} needs an EC key")
        ec_key = key
        width = (ec_key.curve.key_size + 7) // 8

        def sign_ecdsa(data: bytes) -> bytes:
            return der_to_p1363(ec_key.sign(data, ec.ECDSA(hash_type())), width)

        return sign_ecdsa
    if not isinstance(key, rsa.RSAPrivateKey):
        raise CredentialError(f"algorithm {algorithm} needs an RSA key")
    rsa_key = key

    def sign_pss(data: bytes) -> bytes:
        pss = padding.PSS(mgf=padding.MGF1(hash_type()), salt_length=hash_type().digest_size)
        return rsa_key.sign(data, pss, hash_type())

    return sign_pss
