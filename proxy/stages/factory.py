"""`full_stages`: the production chain, every stage built from its library and the config.

`proxy.app.default_stages` is the bare chain (authentication, request parsing, upstream, and an
explicit `skipped` record for each policy stage). This factory replaces each skipped stage with the
real one. It is one plain list, in order: the story of a request, top to bottom.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..pipeline import Stage
from ..settings import ConfigError, Settings

if TYPE_CHECKING:
    from ..app import StageDeps


def licence_stage(settings: Settings, shared: dict[str, Any] | None = None) -> Stage:
    from policies.licences import LicenceTable, TenantLicenceProfile

    from .licence import LicenceStage

    table_path = settings.licences.get("table")
    table = LicenceTable.load(Path(table_path) if table_path else None)
    try:
        profiles = {
            name: TenantLicenceProfile.model_validate(tenant.licence_profile)
            for name, tenant in settings.tenants.items()
        }
    except ValueError as exc:
        raise ConfigError(f"invalid licence_profile: {exc}") from exc
    kinds = {name: provider.kind for name, provider in settings.providers.items()}
    return LicenceStage(table, profiles, kinds)


def provenance_stage(settings: Settings, shared: dict[str, Any] | None = None) -> Stage:
    from .provenance import ProvenanceStage, provenance_settings

    signing, development = provenance_settings(settings.provenance, settings.server.data_dir)
    return ProvenanceStage(signing, development=development)


def limits_stage(settings: Settings, shared: dict[str, Any] | None = None) -> Stage:
    from .limits import build_limits_stage

    return build_limits_stage(settings)


def prompt_filter_stage(settings: Settings, shared: dict[str, Any] | None = None) -> Stage:
    from .prompt_filter import PromptFilterStage, build_filters

    try:
        default, per_tenant = build_filters(
            settings.prompt_filter, {name: tenant.prompt_policy for name, tenant in settings.tenants.items()}
        )
    except ValueError as exc:
        raise ConfigError(f"invalid prompt policy: {exc}") from exc
    return PromptFilterStage(default, per_tenant)


def _classifier(settings: Settings, shared: dict[str, Any] | None) -> Any:
    """The one classifier service both image stages use (one model per process)."""
    from .image_classifier import classifier_service

    if shared is None:
        return classifier_service(settings.classifier)
    if "classifier" not in shared:
        shared["classifier"] = classifier_service(settings.classifier)
    return shared["classifier"]


def input_images_stage(settings: Settings, shared: dict[str, Any] | None = None) -> Stage:
    from .image_classifier import InputImageStage

    return InputImageStage(_classifier(settings, shared))


def output_classifier_stage(settings: Settings, shared: dict[str, Any] | None = None) -> Stage:
    from .image_classifier import OutputClassifierStage

    return OutputClassifierStage(_classifier(settings, shared))


#: Builders of the real stages, by the name of the skipped stage they replace.
BUILDERS: dict[str, Callable[[Settings, dict[str, Any] | None], Stage]] = {
    "licence": licence_stage,
    "prompt_filter": prompt_filter_stage,
    "input_images": input_images_stage,
    "output_classifier": output_classifier_stage,
    "limits": limits_stage,
    "provenance": provenance_stage,
}


def _replace(settings: Settings, deps: StageDeps, names: set[str]) -> list[Stage]:
    from ..app import default_stages

    chain = default_stages(settings, deps)
    shared: dict[str, Any] = {}
    built = [
        BUILDERS[stage.name](settings, shared) if stage.name in names and stage.name in BUILDERS else stage
        for stage in chain
    ]
    for stage in built:  # stages that report metrics of their own get the app's registry
        bind_metrics = getattr(stage, "bind_metrics", None)
        if bind_metrics is not None:
            bind_metrics(deps.metrics)
    return built


def full_stages(settings: Settings, deps: StageDeps) -> Sequence[Stage]:
    return _replace(settings, deps, set(BUILDERS))


def policy_stages(settings: Settings, deps: StageDeps) -> Sequence[Stage]:
    """The cheap per-request policy stages only (no image classification, no signing): benchmarks."""
    return _replace(settings, deps, {"limits", "licence", "prompt_filter"})
