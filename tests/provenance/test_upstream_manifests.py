"""Images that arrive with a provider's C2PA manifest keep it, as imagegate's parentOf ingredient.

Uses real upstream-signed files (OpenAI ChatGPT, Amazon Titan, Adobe Firefly, c2pa-rs) from
`shared/fixtures/c2pa/` beside the repository; skipped when that folder is absent.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import c2pa
import pytest

from provenance import ManifestSigner, verify_image
from provenance.manifest import UPSTREAM_INGREDIENT_ID
from tests.provenance.conftest import make_info

UPSTREAM = {
    "openai-chatgpt-umrs-logo.png": "image/png",
    "amazon-titan-g1.png": "image/png",
    "adobe-firefly-tabby-cat.jpg": "image/jpeg",
    "c2pa-rs-C.jpg": "image/jpeg",
    "c2pa-rs-CACA.jpg": "image/jpeg",
}


def manifest_store(data: bytes, media_type: str) -> dict:
    reader = c2pa.Reader(media_type, io.BytesIO(data))
    try:
        return dict(json.loads(reader.json()))
    finally:
        reader.close()


@pytest.mark.parametrize("name", sorted(UPSTREAM))
def test_upstream_manifest_is_kept_as_parent_ingredient(
    signer: ManifestSigner, root_pem: str, fixtures_dir: Path, name: str
) -> None:
    media_type = UPSTREAM[name]
    original = (fixtures_dir / name).read_bytes()
    before = manifest_store(original, media_type)

    signed = signer.sign(original, media_type, make_info())
    assert signed.upstream_manifest

    after = manifest_store(signed.data, media_type)
    assert after["active_manifest"] == signed.manifest_id
    # nothing stripped: every upstream manifest is still in the store, plus ours
    assert set(before["manifests"]) <= set(after["manifests"])
    assert len(after["manifests"]) == len(before["manifests"]) + 1
    ours = after["manifests"][signed.manifest_id]
    parents = [i for i in ours["ingredients"] if i["relationship"] == "parentOf"]
    assert len(parents) == 1
    assert parents[0]["active_manifest"] == before["active_manifest"]
    actions = next(a for a in ours["assertions"] if a["label"].startswith("c2pa.actions"))
    opened = actions["data"]["actions"][0]
    assert opened["action"] == "c2pa.opened"
    assert opened["parameters"]["ingredients"], "c2pa.opened must reference its ingredient"

    report = verify_image(signed.data, media_type, trust_anchors_pem=root_pem)
    # The new active manifest is trusted even when the upstream one has expired (OpenAI's).
    assert report.state == "trusted", report.failures
    assert [(i.relationship, i.has_manifest) for i in report.ingredients] == [("parentOf", True)]
    assert report.imagegate is not None and report.imagegate["audit_id"] == "audit-0001"


def test_openai_fixture_reports_its_generator_through_the_chain(fixtures_dir: Path) -> None:
    report = verify_image((fixtures_dir / "openai-chatgpt-umrs-logo.png").read_bytes())
    assert report.has_credentials
    assert report.state == "invalid"  # its certificate expired on 2026-01-13, no timestamp
    assert "signingCredential.expired" in [f.code for f in report.failures]
    assert report.signer is not None and report.signer.issuer == "OpenAI"
    assert report.software_agent == "GPT-4o"  # from the inner manifest's c2pa.created
    assert report.digital_source_type is not None
    assert report.digital_source_type.endswith("trainedAlgorithmicMedia")


def test_upstream_ingredient_id_is_stable() -> None:
    assert UPSTREAM_INGREDIENT_ID == "upstream-provider-image"
