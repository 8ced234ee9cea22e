"""The error tree of `provenance`: every failure leaves this package as one of these.

```
ProvenanceError                 anything provenance could not do
 +-- CredentialError            certificate chain or private key missing, unreadable, expired,
 |                              not yet valid, not chained, or not usable for C2PA
 +-- SigningError               building or signing a manifest failed
 |    +-- TimestampAuthorityError   the configured RFC 3161 timestamp authority failed
 +-- VerificationError          an image could not be read at all (not: "it is invalid")
```

c2pa-python's `C2paError` never leaves this package: callers (the proxy's signing stage, the
verification handler, the CLI) catch `ProvenanceError` only. This module must never import
`c2pa` or do any I/O; it only names failures.
"""

from __future__ import annotations


class ProvenanceError(Exception):
    """Base class of every error raised by `provenance`."""


class CredentialError(ProvenanceError):
    """The signing certificate chain or private key cannot be used (says which and why)."""


class SigningError(ProvenanceError):
    """A manifest could not be built or signed into an image."""


class TimestampAuthorityError(SigningError):
    """The timestamp authority (TSA) could not be reached or returned an unusable answer."""


class VerificationError(ProvenanceError):
    """An image could not be read for verification (unsupported or unreadable bytes)."""
