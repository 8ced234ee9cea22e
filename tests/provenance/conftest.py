"""Shared fixtures for the provenance tests: dev credentials, a signer, generated images."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from provenance import (
    ManifestInfo,
    ManifestSigner,
    ProvenanceSettings,
    ensure_dev_credentials,
    load_signing_credentials,
)
from provenance.dev_credentials import DevCredentials

#: Upstream-signed images (OpenAI, Amazon, Adobe, c2pa-rs); the CI clone has shared/ beside the repo.
FIXTURES = Path(__file__).parents[2].parent / "shared" / "fixtures" / "c2pa"

FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}


def make_image(fmt: str, size: int = 256, seed: int = 0) -> bytes:
    """A smooth-ish RGB test image (gradient plus a little noise) encoded as `fmt`."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    base = np.stack([x * 255 // size, y * 255 // size, (x + y) * 127 // size], axis=-1)
    noise = rng.integers(0, 16, (size, size, 3))
    pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt, **({"quality": 90} if fmt != "PNG" else {}))
    return buffer.getvalue()


def make_info(**overrides: object) -> ManifestInfo:
    values: dict[str, object] = {
        "model": "gpt-image-1",
        "provider": "openai",
        "verdicts": [
            {"stage": "prompt_filter", "action": "allow", "category": None, "score": 0.0},
            {"stage": "output_classifier", "action": "allow", "category": "nsfw", "score": 0.02},
        ],
        "policy_version": "sha256:0f1e2d3c4b5a69788796a5b4c3d2e1f0",
        "licence": {"model": "gpt-image-1", "decision": "allowed", "rule": "default"},
        "audit_id": "audit-0001",
        "request_id": "req-0001",
    }
    values.update(overrides)
    return ManifestInfo(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def dev_credentials(tmp_path_factory: pytest.TempPathFactory) -> DevCredentials:
    return ensure_dev_credentials(tmp_path_factory.mktemp("dev-keys"))


@pytest.fixture(scope="session")
def root_pem(dev_credentials: DevCredentials) -> str:
    return dev_credentials.root_ca_file.read_text()


@pytest.fixture(scope="session")
def settings(dev_credentials: DevCredentials) -> ProvenanceSettings:
    return ProvenanceSettings(
        cert_chain_file=dev_credentials.cert_chain_file,
        private_key_file=dev_credentials.private_key_file,
        claim_generator_version="0.1.0",
    )


@pytest.fixture(scope="session")
def signer(settings: ProvenanceSettings) -> Iterator[ManifestSigner]:
    manifest_signer = ManifestSigner(load_signing_credentials(settings), settings)
    yield manifest_signer
    manifest_signer.close()


@pytest.fixture(scope="session")
def images() -> dict[str, bytes]:
    return {media_type: make_image(fmt) for fmt, media_type in FORMATS.items()}


@pytest.fixture()
def fixtures_dir() -> Path:
    if not FIXTURES.is_dir():
        pytest.skip(f"upstream C2PA fixtures not found at {FIXTURES} (shared/ beside the repo)")
    return FIXTURES
