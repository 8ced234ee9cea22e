"""C2PA Content Credentials: building manifests, signing, reading and verifying, certificates.

The public API, all blocking (the proxy runs it in worker threads):

- `ProvenanceSettings`: configuration (pydantic).
- `ensure_dev_credentials(directory, algorithm)` (`DEV_ALGORITHMS`: es256, ed25519),
  `load_signing_credentials(settings)`: keys and chains.
- `ManifestSigner(credentials, settings).sign(image, media_type, info) -> SignedImage`: the
  manifest store embedded in the image, beside it as a sidecar, or both (`settings.mode`).
- `verify_image(data, media_type=None, trust_anchors_pem=None, manifest_store=None)
  -> VerificationReport`, `manifest_store` being a sidecar (`.c2pa`) to check the image against.
- Errors: `ProvenanceError` > `CredentialError`, `SigningError` > `TimestampAuthorityError`,
  `VerificationError`.

Never imports `proxy`.
"""

from provenance.dev_credentials import DEV_ALGORITHMS, DevCredentials, ensure_dev_credentials
from provenance.errors import (
    CredentialError,
    ProvenanceError,
    SigningError,
    TimestampAuthorityError,
    VerificationError,
)
from provenance.keys import SigningCallback, SigningCredentials, load_signing_credentials
from provenance.manifest import (
    IMAGEGATE_ASSERTION_LABEL,
    TRAINED_ALGORITHMIC_MEDIA,
    Ingredient,
    ManifestInfo,
)
from provenance.settings import ManifestMode, ProvenanceSettings
from provenance.sign import ManifestSigner, SignedImage
from provenance.verify import VerificationReport, verify_image

__all__ = [
    "DEV_ALGORITHMS",
    "IMAGEGATE_ASSERTION_LABEL",
    "TRAINED_ALGORITHMIC_MEDIA",
    "CredentialError",
    "DevCredentials",
    "Ingredient",
    "ManifestInfo",
    "ManifestMode",
    "ManifestSigner",
    "ProvenanceError",
    "ProvenanceSettings",
    "SignedImage",
    "SigningCallback",
    "SigningCredentials",
    "SigningError",
    "TimestampAuthorityError",
    "VerificationError",
    "VerificationReport",
    "ensure_dev_credentials",
    "load_signing_credentials",
    "verify_image",
]
