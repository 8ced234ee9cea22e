"""What imagegate states about an image: the C2PA manifest definition, as plain data.

`plan_manifest(info, ...)` returns the manifest definition (the JSON c2pa-python's `Builder`
takes) and the ingredients to attach, choosing the actions the C2PA specification allows:

| the image...                                  | actions                                        | ingredients                          |
|-----------------------------------------------|------------------------------------------------|--------------------------------------|
| was generated, carries no C2PA                | `c2pa.created` (trainedAlgorithmicMedia)       | edit inputs, if any: see next rows   |
| carries the provider's C2PA (OpenAI's do)     | `c2pa.opened` (ingredientIds: the provider's)  | provider manifest `parentOf`,        |
|                                               |                                                | edit inputs `inputTo`                |
| is an edit, no C2PA from the provider         | `c2pa.opened` (the first input), then          | first input `parentOf`, others       |
|                                               | `c2pa.edited` (trainedAlgorithmicMedia)        | `inputTo`                            |

Why: a manifest holds exactly one `c2pa.created` or `c2pa.opened` action, first; a `created`
manifest has no `parentOf` ingredient; an `opened` action must name its ingredient
(`parameters.ingredientIds`, else c2pa-rs reports `assertion.action.ingredientMismatch`); a
manifest has at most one `parentOf` ingredient (`manifest.multipleParents`). So a provider's
manifest is the parent (it is the image we were handed, it already says `c2pa.created`), and
inputs of an edit that did not become the parent are `inputTo` (C2PA 2.2: inputs to a generative
process). Every action carries the model and provider as `softwareAgent`; the opened/edited
actions repeat the digital source type so a reader of the active manifest alone sees the AI
disclosure.

This module must never import `c2pa`, touch the network or sign anything: it only builds data.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from provenance.errors import SigningError
from provenance.settings import ProvenanceSettings

#: IPTC digital source type for media made by a trained model (what C2PA calls "AI-generated").
TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"

#: imagegate's own assertion (reverse-DNS label, as C2PA requires for entity-specific assertions).
IMAGEGATE_ASSERTION_LABEL = "dev.imagegate.moderation"
IMAGEGATE_ASSERTION_VERSION = 1

UPSTREAM_INGREDIENT_ID = "upstream-provider-image"


@dataclass(frozen=True, slots=True)
class Ingredient:
    """An input image of an edit, to be named in the manifest (its bytes are hashed, not kept)."""

    data: bytes = field(repr=False)
    media_type: str
    title: str


@dataclass(frozen=True, slots=True)
class ManifestInfo:
    """Everything imagegate states about one generated image."""

    model: str
    provider: str
    verdicts: list[dict[str, Any]]
    policy_version: str
    audit_id: str
    request_id: str
    licence: dict[str, Any] | None = None
    ingredients: list[Ingredient] = field(default_factory=list)
    created_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))


@dataclass(frozen=True, slots=True)
class PlannedIngredient:
    """An ingredient to add to the Builder: its JSON definition and the bytes it describes."""

    definition: dict[str, Any]
    data: bytes = field(repr=False)
    media_type: str


@dataclass(frozen=True, slots=True)
class ManifestPlan:
    label: str
    definition: dict[str, Any]
    ingredients: list[PlannedIngredient]


def plan_manifest(
    info: ManifestInfo,
    settings: ProvenanceSettings,
    *,
    upstream: tuple[bytes, str] | None,
) -> ManifestPlan:
    """Build the manifest for `info`; `upstream` is (bytes, media type) of an image with C2PA."""
    agent = {"name": info.model, "provider": info.provider}
    when = _timestamp(info.created_at)
    ingredients: list[PlannedIngredient] = []
    actions: list[dict[str, Any]]
    inputs = list(info.ingredients)
    if upstream is not None:
        data, media_type = upstream
        ingredients.append(
            PlannedIngredient(
                definition={
                    "title": f"{info.provider} {info.model} output, as received by imagegate",
                    "relationship": "parentOf",
                    "label": UPSTREAM_INGREDIENT_ID,
                },
                data=data,
                media_type=media_type,
            )
        )
        actions = [
            _action("c2pa.opened", agent, when, ingredient_ids=[UPSTREAM_INGREDIENT_ID]),
        ]
        ingredients.extend(_input_ingredients(inputs, start=0))
    elif inputs:
        parent_id = "input-1"
        first = inputs[0]
        ingredients.append(
            PlannedIngredient(
                definition={"title": first.title, "relationship": "parentOf", "label": parent_id},
                data=first.data,
                media_type=first.media_type,
            )
        )
        ingredients.extend(_input_ingredients(inputs[1:], start=1))
        actions = [
            _action("c2pa.opened", agent, when, ingredient_ids=[parent_id]),
            _action("c2pa.edited", agent, when),
        ]
    else:
        actions = [_action("c2pa.created", agent, when)]

    generator: dict[str, Any] = {"name": settings.claim_generator}
    if settings.claim_generator_version:
        generator["version"] = settings.claim_generator_version
    label = f"urn:c2pa:{uuid.uuid4()}"
    definition: dict[str, Any] = {
        "label": label,
        "claim_generator_info": [generator],
        "assertions": [
            {"label": "c2pa.actions", "data": {"actions": actions}},
            {"label": IMAGEGATE_ASSERTION_LABEL, "data": imagegate_assertion(info, created_at=when)},
        ],
    }
    return ManifestPlan(label=label, definition=definition, ingredients=ingredients)


def imagegate_assertion(info: ManifestInfo, *, created_at: str | None = None) -> dict[str, Any]:
    """The `dev.imagegate.moderation` assertion: decisions, the rules that made them, the audit id.

    `created_at` is `info.created_at` as the manifest writes it, when the caller has it already.
    """
    data: dict[str, Any] = {
        "version": IMAGEGATE_ASSERTION_VERSION,
        "model": info.model,
        "provider": info.provider,
        "policy_version": info.policy_version,
        "verdicts": info.verdicts,
        "licence": info.licence,
        "audit_id": info.audit_id,
        "request_id": info.request_id,
        "created_at": created_at or _timestamp(info.created_at),
    }
    try:
        # Refuses what JSON (hence CBOR) could not carry faithfully (sets, bytes, datetimes, NaN
        # inside verdicts) with a clear error instead of a c2pa-rs parse failure.
        json.dumps(data, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise SigningError(f"moderation data cannot go into a manifest: {exc}") from None
    return data


def _action(
    name: str,
    agent: dict[str, str],
    when: str,
    *,
    ingredient_ids: list[str] | None = None,
) -> dict[str, Any]:
    action: dict[str, Any] = {
        "action": name,
        "when": when,
        "softwareAgent": agent,
        "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA,
    }
    if ingredient_ids:
        action["parameters"] = {"ingredientIds": ingredient_ids}
    return action


def _input_ingredients(inputs: list[Ingredient], *, start: int) -> list[PlannedIngredient]:
    return [
        PlannedIngredient(
            definition={
                "title": item.title,
                "relationship": "inputTo",
                "label": f"input-{start + offset + 1}",
            },
            data=item.data,
            media_type=item.media_type,
        )
        for offset, item in enumerate(inputs)
    ]


def _timestamp(moment: dt.datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC).isoformat(timespec="seconds")
