"""Tests for the licence table and `decide_licence`: each licence family across tenant profiles."""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path

import pytest
import yaml

from policies.decisions import Action
from policies.licences import (
    HeldLicence,
    LicenceDecision,
    LicenceOutcome,
    LicenceTable,
    TenantLicenceProfile,
    decide_licence,
)

TODAY = date(2025, 8, 1)
ALLOW = LicenceOutcome.ALLOW
OBLIGED = LicenceOutcome.ALLOW_WITH_OBLIGATIONS
BLOCK = LicenceOutcome.BLOCK

#: Every decision a test makes is collected here, so the plain-wording test can review all blocks.
DECISIONS: list[LicenceDecision] = []


@pytest.fixture(scope="module")
def table() -> LicenceTable:
    return LicenceTable.load()


def profile(**fields: object) -> TenantLicenceProfile:
    return TenantLicenceProfile.model_validate(fields)


def held(licence_id: str, expires: str | None = None) -> dict[str, object]:
    return {"licence_id": licence_id, "reference": "REF-123", "expires": expires}


def decide(table: LicenceTable, tenant: TenantLicenceProfile, model: str, **kwargs: object) -> LicenceDecision:
    kwargs.setdefault("today", TODAY)
    decision = decide_licence(table, tenant, model, **kwargs)  # type: ignore[arg-type]
    DECISIONS.append(decision)
    return decision


COMMERCIAL = profile(commercial_use=True, annual_revenue_usd=200_000)
COMMERCIAL_LARGE = profile(commercial_use=True, annual_revenue_usd=50_000_000, monthly_active_users=3_000_000)
COMMERCIAL_UNKNOWN = profile(commercial_use=True)
NON_COMMERCIAL = profile(commercial_use=False)
WITH_BFL = profile(commercial_use=True, licences_held=[held("bfl-flux-dev-commercial", "2026-06-30")])
WITH_BFL_EXPIRED = profile(commercial_use=True, licences_held=[held("bfl-flux-dev-commercial", "2025-01-31")])
WITH_STABILITY = profile(
    commercial_use=True, annual_revenue_usd=50_000_000, licences_held=[held("stability-enterprise", "2026-01-01")]
)
WITH_STABILITY_EXPIRED = profile(
    commercial_use=True, annual_revenue_usd=50_000_000, licences_held=[held("stability-enterprise", "2025-03-31")]
)


# ---- the table ----------------------------------------------------------------------------------


def test_table_has_version_fingerprint_and_sources(table: LicenceTable) -> None:
    assert table.version
    assert re.fullmatch(r"[0-9a-f]{64}", table.fingerprint)
    for entry in table.entries.values():
        assert entry.licence_id and entry.licence_version
        assert entry.source_url.startswith("https://")
    assert LicenceTable.load().fingerprint == table.fingerprint


def test_fingerprint_ignores_layout_but_not_content(tmp_path: Path, table: LicenceTable) -> None:
    shipped = Path("policies/data/licences.yaml").read_text(encoding="utf-8")
    data = yaml.safe_load(shipped)
    relaid = tmp_path / "relaid.yaml"
    relaid.write_text("# comment\n" + yaml.safe_dump(data, sort_keys=True), encoding="utf-8")
    assert LicenceTable.load(relaid).fingerprint == table.fingerprint
    data["licences"][0]["version"] = "v9"
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(data), encoding="utf-8")
    assert LicenceTable.load(changed).fingerprint != table.fingerprint


def test_duplicate_alias_is_rejected(tmp_path: Path) -> None:
    data = yaml.safe_load(Path("policies/data/licences.yaml").read_text(encoding="utf-8"))
    data["models"][1]["aliases"].append("FLUX_1_DEV")  # already flux-1-dev's id, after normalising
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(ValueError, match="claimed by both"):
        LicenceTable.load(path)


def test_every_family_from_the_issue_is_present(table: LicenceTable) -> None:
    expected = {
        "flux-1-dev": "flux-1-dev-non-commercial",
        "flux-1-schnell": "apache-2.0",
        "flux-1-kontext-dev": "flux-1-dev-non-commercial",
        "flux-2-dev": "flux-non-commercial-v2",
        "sd-3-5-large": "stability-community",
        "sd-3-5-medium": "stability-community",
        "sd-3-5-large-turbo": "stability-community",
        "sdxl": "creativeml-openrail-pp-m",
        "sd-1-5": "creativeml-openrail-m",
        "stable-cascade": "stability-non-commercial-research",
        "openai-gpt-image": "openai-terms",
        "google-imagen": "gemini-api-terms",
        "bfl-flux-hosted": "bfl-flux-api-terms",
    }
    for entry_id, licence_id in expected.items():
        assert table.entries[entry_id].licence_id == licence_id


def test_flux_dev_licence_records_the_output_wording_history(table: LicenceTable) -> None:
    terms = table.licence("flux-1-dev-non-commercial")
    assert terms.version == "v1.1.1"
    assert terms.outputs_commercial is True
    versions = " ".join(item.version for item in terms.history)
    assert "v1.0" in versions and "v1.1 " in versions and "v1.1.1" in versions
    assert any("removed" in item.change for item in terms.history)


# ---- alias resolution ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model_id", "provider"),
    [
        ("black-forest-labs/flux-dev", "replicate"),
        ("black-forest-labs/flux-dev:" + "a" * 64, "replicate"),
        ("fal-ai/flux/dev", "fal"),
        ("flux-dev", "bfl"),
        ("black-forest-labs/FLUX.1-dev", "huggingface"),
        ("FLUX_1_DEV", None),
        ("flux.1 dev", None),
    ],
)
def test_flux_dev_aliases_across_providers(table: LicenceTable, model_id: str, provider: str | None) -> None:
    entry = table.resolve(model_id, provider)
    assert entry is not None and entry.id == "flux-1-dev"


@pytest.mark.parametrize(
    "model_id",
    ["stabilityai/stable-diffusion-3.5-large", "stability-ai/stable-diffusion-3.5-large", "sd3.5-large", "SD3_5_Large"],
)
def test_sd35_large_aliases(table: LicenceTable, model_id: str) -> None:
    entry = table.resolve(model_id)
    assert entry is not None and entry.id == "sd-3-5-large"


def test_tenant_aliases_map_self_hosted_names(table: LicenceTable) -> None:
    tenant = profile(commercial_use=True, aliases={"our-gpu-pool/flux-prod": "flux-1-dev"})
    assert table.resolve("our-gpu-pool/flux-prod") is None
    entry = table.resolve("OUR_GPU_POOL/flux-prod", aliases=tenant.aliases)
    assert entry is not None and entry.id == "flux-1-dev"
    decision = decide(table, tenant, "our-gpu-pool/flux-prod")
    assert decision.resolved_entry == "flux-1-dev" and decision.action is BLOCK


def test_tenant_alias_to_missing_entry_is_an_error(table: LicenceTable) -> None:
    with pytest.raises(ValueError, match="unknown entry"):
        table.resolve("mine", aliases={"mine": "no-such-entry"})


def test_unknown_id_resolves_to_nothing(table: LicenceTable) -> None:
    assert table.resolve("acme/secret-diffusion") is None


# ---- FLUX.1 [dev] family ------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["flux-1-dev", "fal-ai/flux/dev", "black-forest-labs/FLUX.1-Kontext-dev", "flux-1-krea-dev"])
def test_flux_dev_commercial_without_licence_is_blocked(table: LicenceTable, model: str) -> None:
    decision = decide(table, COMMERCIAL, model, provider="replicate")
    assert decision.action is BLOCK
    assert decision.to_action() is Action.BLOCK
    assert decision.licence_id == "flux-1-dev-non-commercial"
    assert decision.licence_version == "v1.1.1"
    assert "2(b)" in decision.clause and "4(a)" in decision.clause
    assert "holds no valid FLUX [dev] commercial licence" in decision.explanation
    assert "outputs be used commercially" in decision.explanation


def test_flux_dev_with_valid_bfl_licence_is_allowed(table: LicenceTable) -> None:
    decision = decide(table, WITH_BFL, "black-forest-labs/flux-dev", provider="replicate")
    assert decision.action is OBLIGED
    assert decision.to_action() is Action.ALLOW
    assert decision.held_licence is not None and decision.held_licence.licence_id == "bfl-flux-dev-commercial"
    assert "valid until 2026-06-30" in decision.explanation
    assert any("commercial licence with Black Forest Labs" in o for o in decision.obligations)
    assert "REF-123" not in decision.explanation
    assert decision.to_dict()["held_licence"]["reference"] == "REF-123"


def test_flux_dev_with_expired_bfl_licence_is_blocked(table: LicenceTable) -> None:
    decision = decide(table, WITH_BFL_EXPIRED, "flux-1-dev")
    assert decision.action is BLOCK
    assert "expired on 2025-01-31" in decision.explanation
    assert decision.to_dict()["held_licence_expired"] is True


def test_licence_is_valid_on_its_expiry_day(table: LicenceTable) -> None:
    decision = decide(table, WITH_BFL_EXPIRED, "flux-1-dev", today=date(2025, 1, 31))
    assert decision.action is OBLIGED


def test_flux_dev_non_commercial_tenant_is_allowed_with_obligations(table: LicenceTable) -> None:
    decision = decide(table, NON_COMMERCIAL, "fal-ai/flux/dev")
    assert decision.action is OBLIGED
    assert any("Non-commercial use only" in o for o in decision.obligations)
    assert any("content filters" in o for o in decision.obligations)


def test_flux_dev_on_bfl_api_uses_bfl_api_terms(table: LicenceTable) -> None:
    decision = decide(table, COMMERCIAL, "flux-dev", provider="black-forest-labs")
    assert decision.action is OBLIGED
    assert decision.resolved_entry == "flux-1-dev"
    assert decision.licence_id == "bfl-flux-api-terms"
    assert "Black Forest Labs' own API" in decision.explanation


def test_use_case_override_turns_a_commercial_tenant_non_commercial(table: LicenceTable) -> None:
    tenant = profile(commercial_use=True, use_case_overrides={"internal-research": False})
    assert decide(table, tenant, "flux-1-dev", use_case="internal_research").action is OBLIGED
    assert decide(table, tenant, "flux-1-dev", use_case="ads").action is BLOCK
    non_commercial = profile(commercial_use=False, use_case_overrides={"ads": True})
    assert decide(table, non_commercial, "flux-1-dev", use_case="ads").action is BLOCK


def test_flux2_dev_and_klein(table: LicenceTable) -> None:
    assert decide(table, COMMERCIAL, "black-forest-labs/FLUX.2-dev").action is BLOCK
    assert decide(table, WITH_BFL, "black-forest-labs/FLUX.2-dev").action is OBLIGED
    assert decide(table, WITH_BFL_EXPIRED, "flux-2-klein-9b").action is BLOCK
    assert decide(table, COMMERCIAL, "black-forest-labs/FLUX.2-klein-4B").action is ALLOW


# ---- Apache / MIT -------------------------------------------------------------------------------


@pytest.mark.parametrize("tenant", [COMMERCIAL, COMMERCIAL_LARGE, COMMERCIAL_UNKNOWN, NON_COMMERCIAL])
def test_flux_schnell_is_allowed_for_everyone(table: LicenceTable, tenant: TenantLicenceProfile) -> None:
    decision = decide(table, tenant, "black-forest-labs/flux-schnell")
    assert decision.action is ALLOW
    assert decision.obligations == ()
    assert decision.licence_name == "Apache License 2.0"
    assert any("NOTICE" in n for n in decision.notices)


@pytest.mark.parametrize("model", ["Qwen/Qwen-Image", "HiDream-ai/HiDream-I1-Full"])
def test_permissive_models_allowed_commercially(table: LicenceTable, model: str) -> None:
    assert decide(table, COMMERCIAL_LARGE, model).action is ALLOW


# ---- Stability AI Community License -------------------------------------------------------------


@pytest.mark.parametrize("model", ["sd3.5-large", "stabilityai/stable-diffusion-3.5-medium", "sd3.5-large-turbo"])
def test_sd35_under_threshold_allowed_with_attribution(table: LicenceTable, model: str) -> None:
    decision = decide(table, COMMERCIAL, model, provider="stability")
    assert decision.action is OBLIGED
    assert any('"Powered by Stability AI"' in o for o in decision.obligations)
    assert any("Register the commercial use" in o for o in decision.obligations)
    assert "USD 200,000" in decision.explanation


def test_sd35_exactly_at_threshold_is_within(table: LicenceTable) -> None:
    decision = decide(table, profile(commercial_use=True, annual_revenue_usd=1_000_000), "sd3.5-large")
    assert decision.action is OBLIGED


def test_sd35_over_threshold_without_enterprise_is_blocked(table: LicenceTable) -> None:
    decision = decide(table, COMMERCIAL_LARGE, "stability-ai/stable-diffusion-3.5-large")
    assert decision.action is BLOCK
    assert decision.clause == "section III (Commercial Use)"
    assert "USD 50,000,000" in decision.explanation and "USD 1,000,000" in decision.explanation
    assert "no valid Stability AI Enterprise licence" in decision.explanation


def test_sd35_over_threshold_with_enterprise_is_allowed(table: LicenceTable) -> None:
    decision = decide(table, WITH_STABILITY, "sd3.5-large")
    assert decision.action is OBLIGED
    assert any("Enterprise licence" in o for o in decision.obligations)


def test_sd35_over_threshold_with_expired_enterprise_is_blocked(table: LicenceTable) -> None:
    decision = decide(table, WITH_STABILITY_EXPIRED, "sd3.5-large")
    assert decision.action is BLOCK
    assert "expired on 2025-03-31" in decision.explanation


def test_sd35_revenue_unknown_blocks_by_default_and_warns_on_request(table: LicenceTable) -> None:
    blocked = decide(table, COMMERCIAL_UNKNOWN, "sd3.5-large")
    assert blocked.action is BLOCK
    assert "does not state its annual revenue" in blocked.explanation
    warned = decide(table, profile(commercial_use=True, unknown_threshold="warn"), "sd3.5-large")
    assert warned.action is OBLIGED
    assert warned.obligations[0].startswith("Confirm the tenant's annual revenue")


def test_sd35_non_commercial_still_carries_attribution(table: LicenceTable) -> None:
    decision = decide(table, NON_COMMERCIAL, "sd3.5-large")
    assert decision.action is OBLIGED
    assert any("Powered by Stability AI" in o for o in decision.obligations)
    assert not any("Register" in o for o in decision.obligations)


# ---- Stability non-commercial research ---------------------------------------------------------


def test_stable_cascade_commercial(table: LicenceTable) -> None:
    assert decide(table, COMMERCIAL, "stabilityai/stable-cascade").action is BLOCK
    assert decide(table, WITH_STABILITY, "stabilityai/sdxl-turbo").action is OBLIGED
    assert decide(table, WITH_STABILITY_EXPIRED, "sd-turbo").action is BLOCK
    assert decide(table, NON_COMMERCIAL, "stable-cascade").action is OBLIGED


# ---- OpenRAIL -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "licence_id"),
    [
        ("stabilityai/stable-diffusion-xl-base-1.0", "creativeml-openrail-pp-m"),
        ("stability-ai/sdxl", "creativeml-openrail-pp-m"),
        ("runwayml/stable-diffusion-v1-5", "creativeml-openrail-m"),
        ("sd-1.5", "creativeml-openrail-m"),
    ],
)
@pytest.mark.parametrize("tenant", [COMMERCIAL, COMMERCIAL_LARGE, NON_COMMERCIAL])
def test_openrail_allowed_with_use_restrictions(
    table: LicenceTable, model: str, licence_id: str, tenant: TenantLicenceProfile
) -> None:
    decision = decide(table, tenant, model)
    assert decision.action is OBLIGED
    assert decision.licence_id == licence_id
    assert any("restrict" in o for o in decision.obligations)


# ---- Playground (user threshold) and Kolors (registration) -------------------------------------


def test_playground_user_threshold(table: LicenceTable) -> None:
    small = profile(commercial_use=True, monthly_active_users=20_000)
    assert decide(table, small, "playgroundai/playground-v2.5-1024px-aesthetic").action is OBLIGED
    assert decide(table, COMMERCIAL_LARGE, "playground-v2.5").action is BLOCK
    licensed = profile(
        commercial_use=True, monthly_active_users=3_000_000, licences_held=[held("playground-commercial")]
    )
    assert decide(table, licensed, "playground-v2.5").action is OBLIGED
    assert decide(table, COMMERCIAL_UNKNOWN, "playground-v2.5").action is BLOCK


def test_kolors_needs_registration_for_commercial_use(table: LicenceTable) -> None:
    assert decide(table, COMMERCIAL, "Kwai-Kolors/Kolors").action is BLOCK
    registered = profile(commercial_use=True, licences_held=[held("kolors-commercial-registration")])
    assert decide(table, registered, "Kwai-Kolors/Kolors").action is OBLIGED
    assert decide(table, NON_COMMERCIAL, "kolors").action is OBLIGED


# ---- hosted proprietary -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "provider", "licence_id"),
    [
        ("gpt-image-1", "openai", "openai-terms"),
        ("dall-e-3", "openai", "openai-terms"),
        ("imagen-4.0-generate-001", "google", "gemini-api-terms"),
        ("gemini-2.5-flash-image", "google", "gemini-api-terms"),
        ("flux-pro-1.1", "bfl", "bfl-flux-api-terms"),
        ("black-forest-labs/flux-1.1-pro", "replicate", "bfl-flux-api-terms"),
    ],
)
@pytest.mark.parametrize("tenant", [COMMERCIAL_LARGE, COMMERCIAL_UNKNOWN, NON_COMMERCIAL])
def test_hosted_models_allowed_with_provider_terms(
    table: LicenceTable, model: str, provider: str, licence_id: str, tenant: TenantLicenceProfile
) -> None:
    decision = decide(table, tenant, model, provider=provider)
    assert decision.action is OBLIGED
    assert decision.licence_id == licence_id
    assert decision.obligations


def test_gemini_terms_pass_on_age_and_region_limits(table: LicenceTable) -> None:
    decision = decide(table, COMMERCIAL, "imagen-4.0-generate-001", provider="google")
    assert any("under 18" in o for o in decision.obligations)
    assert any("European Economic Area" in o for o in decision.obligations)


# ---- unknown models -----------------------------------------------------------------------------


def test_unknown_model_warns_by_default(table: LicenceTable) -> None:
    decision = decide(table, COMMERCIAL, "acme/secret-diffusion")
    assert decision.action is OBLIGED
    assert decision.resolved_entry is None and decision.licence_id is None
    assert "unknown model, not in" in decision.explanation
    assert decision.table_version == table.version


def test_unknown_model_blocked_when_tenant_says_so(table: LicenceTable) -> None:
    decision = decide(table, profile(unknown_model="block"), "acme/secret-diffusion")
    assert decision.action is BLOCK
    assert "unknown model, not in" in decision.explanation


# ---- the record ---------------------------------------------------------------------------------


def test_to_dict_and_to_decision(table: LicenceTable) -> None:
    decision = decide(table, COMMERCIAL, "sd3.5-large", provider="stability", use_case="ads")
    data = decision.to_dict()
    assert data["action"] == "allow_with_obligations"
    assert data["licence_id"] == "stability-community"
    assert data["table_fingerprint"] == table.fingerprint
    assert data["obligations"] == list(decision.obligations)
    common = decision.to_decision()
    assert common.stage == "licence" and common.action is Action.ALLOW
    assert common.reason == decision.explanation


def test_profile_rejects_unknown_fields() -> None:
    with pytest.raises(ValueError):
        TenantLicenceProfile.model_validate({"comercial_use": True})
    parsed = HeldLicence.model_validate({"licence_id": "x", "expires": "2026-01-01"})
    assert parsed.expires == date(2026, 1, 1)


# ---- plain wording of every block ---------------------------------------------------------------

_JARGON = re.compile(r"LicenceOutcome|Action\.|ALLOW_WITH_OBLIGATIONS|allow_with_obligations|\bBLOCK\b|\bNone\b")
_ALLOWED_SNAKE_CASE = {"annual_revenue_usd", "monthly_active_users"}
_ALL_PROFILES = [
    COMMERCIAL,
    COMMERCIAL_LARGE,
    COMMERCIAL_UNKNOWN,
    NON_COMMERCIAL,
    WITH_BFL,
    WITH_BFL_EXPIRED,
    WITH_STABILITY,
    WITH_STABILITY_EXPIRED,
    profile(unknown_model="block"),
]


def _all_block_decisions(table: LicenceTable) -> list[LicenceDecision]:
    """Every block the profiles used in this module produce over the whole table, plus those the
    tests above recorded (with their providers and tenant aliases)."""
    matrix = [
        decide_licence(table, tenant, model, today=TODAY)
        for tenant in _ALL_PROFILES
        for model in [*table.entries, "acme/secret-diffusion"]
    ]
    return [d for d in [*matrix, *DECISIONS] if d.action is BLOCK]


def test_every_block_explanation_names_licence_and_clause_plainly(table: LicenceTable) -> None:
    blocks = _all_block_decisions(table)
    assert len(blocks) >= 30
    assert {d.licence_id for d in blocks} >= {
        "flux-1-dev-non-commercial",
        "flux-non-commercial-v2",
        "stability-community",
        "stability-non-commercial-research",
        "playground-v2-5-community",
        "kolors",
        None,
    }
    internal_ids = [i for i in (*table.licences, *table.entries) if re.search(r"[-.]", i)]
    for decision in blocks:
        text = decision.explanation
        assert not _JARGON.search(text), text
        assert set(re.findall(r"\b[a-z]+(?:_[a-z]+)+\b", text)) <= _ALLOWED_SNAKE_CASE, text
        assert text.endswith("."), text
        if decision.licence_id is None:
            assert "not in imagegate's licence table" in text, text
            continue
        assert decision.licence_name and decision.licence_name in text, text
        assert decision.clause and f"clause relied on is {decision.clause}" in text, text
        without_request_id = text.replace(decision.model_id, "")
        for identifier in internal_ids:
            assert not re.search(rf"(?<![\w.-]){re.escape(identifier)}(?![\w.-])", without_request_id), (
                identifier,
                text,
            )
