"""The prompt filter and the image classifier in the production chain, driven through the SDK.

The classifier is a tiny open_clip model saved as a real checkpoint (random weights), so every
verdict must say `uncalibrated`; categories are forced to fire with threshold offsets, which is how
a policy file makes a category stricter.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import openai
import pytest

from proxy.app import GATEWAY
from proxy.stages.factory import full_stages
from tests.classifiers.conftest import TINY_ARCHITECTURE, TinyModels, tiny_models  # noqa: F401  (fixture)
from tests.conftest import OTHER_TENANT_KEY, TENANT_KEY, make_settings
from tests.fakes.openai_upstream import make_image

OTHER_CATEGORIES = ["minors", "violence", "self_harm", "hate", "weapons", "drugs"]


def classifier_section(models: TinyModels, action: str) -> dict[str, Any]:
    """Only `sexual` is scored, and it always fires (offset -10): its action decides every image."""
    return {
        "enabled": True,
        "required": True,
        "model": TINY_ARCHITECTURE,
        "pretrained": None,
        "checkpoint": str(models.checkpoint),
        "actions": {"sexual": action},
        "concepts": {"disabled_categories": OTHER_CATEGORIES, "threshold_offsets": {"sexual": -10.0}},
    }


def client(base_url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base_url, api_key=TENANT_KEY, max_retries=0)


async def test_blocked_prompt_never_reaches_upstream_and_is_not_echoed(tmp_path: Path, fake_openai, start_gateway, upstream_key: str) -> None:
    fake, upstream_url = fake_openai
    server, base_url = await start_gateway(make_settings(tmp_path, upstream_url), stages=full_stages)
    async with client(base_url) as sdk:
        with pytest.raises(openai.BadRequestError) as caught:
            await sdk.images.generate(model="gpt-image-1", prompt="a n.u.d.3 photo of a schoolgirl")
        allowed = await sdk.images.generate(model="gpt-image-1", prompt="children playing in a park")
    assert caught.value.code == "content_policy_violation"
    message = caught.value.body["message"].lower()
    assert "schoolgirl" not in message and "nud" not in message
    assert len(fake.received) == 1 and fake.received[0]["fields"]["prompt"] == "children playing in a park"
    assert len(allowed.data) == 1
    record = await server.app[GATEWAY].audit.get(caught.value.response.headers["X-Imagegate-Audit-Id"])
    decision = next(d for d in record["decisions"] if d["stage"] == "prompt_filter")
    assert decision["action"] == "block" and decision["category"] == "sexual_minors"


async def test_negative_prompt_is_screened_too(tmp_path: Path, fake_openai, start_gateway, upstream_key: str) -> None:
    fake, upstream_url = fake_openai
    _, base_url = await start_gateway(make_settings(tmp_path, upstream_url), stages=full_stages)
    async with client(base_url) as sdk:
        with pytest.raises(openai.BadRequestError):
            await sdk.images.generate(
                model="gpt-image-1", prompt="a portrait of a schoolgirl", extra_body={"negative_prompt": "clothes"}
            )
    assert fake.received == []


async def test_blurred_outputs_are_marked_and_uncalibrated_says_so(
    tmp_path: Path, fake_openai, start_gateway, upstream_key: str, tiny_models: TinyModels
) -> None:
    _, upstream_url = fake_openai
    settings = make_settings(tmp_path, upstream_url, classifier=classifier_section(tiny_models, "blur"))
    server, base_url = await start_gateway(settings, stages=full_stages)
    async with client(base_url) as sdk:
        raw = await sdk.images.with_raw_response.generate(model="gpt-image-1", prompt="a red square", n=2)
    result = raw.parse()
    assert raw.headers["X-Imagegate-Blurred"] == "2" and len(result.data) == 2
    record = await server.app[GATEWAY].audit.get(raw.headers["X-Imagegate-Audit-Id"])
    verdicts = [d for d in record["decisions"] if d["stage"] == "output_classifier"]
    assert [d["action"] for d in verdicts] == ["blur", "blur"]
    assert all("UNCALIBRATED" in d["reason"] and d["details"]["calibrated"] is False for d in verdicts)
    assert all(image["blurred"] and image["verdict"]["uncalibrated"] for image in record["images"])
    assert all(image["verdict"]["checkpoint_sha256"] for image in record["images"])
    # The blurred copy is what was signed and released.
    assert record["images"][0]["sha256"] != ""
    base64.b64decode(result.data[0].b64_json)


async def test_blocked_outputs_are_withheld(tmp_path: Path, fake_openai, start_gateway, upstream_key: str, tiny_models: TinyModels) -> None:
    _, upstream_url = fake_openai
    settings = make_settings(tmp_path, upstream_url, classifier=classifier_section(tiny_models, "block"))
    server, base_url = await start_gateway(settings, stages=full_stages)
    async with client(base_url) as sdk:
        with pytest.raises(openai.BadRequestError) as caught:
            await sdk.images.generate(model="gpt-image-1", prompt="a red square", n=2)
    assert caught.value.code == "content_policy_violation"
    record = await server.app[GATEWAY].audit.get(caught.value.response.headers["X-Imagegate-Audit-Id"])
    assert [image["released"] for image in record["images"]] == [False, False]
    assert all(image["manifest_id"] is None for image in record["images"])


async def test_unsafe_input_image_stops_the_edit_before_upstream(
    tmp_path: Path, fake_openai, start_gateway, upstream_key: str, tiny_models: TinyModels
) -> None:
    fake, upstream_url = fake_openai
    settings = make_settings(tmp_path, upstream_url, classifier=classifier_section(tiny_models, "block"))
    _, base_url = await start_gateway(settings, stages=full_stages)
    async with client(base_url) as sdk:
        with pytest.raises(openai.BadRequestError) as caught:
            await sdk.images.edit(model="gpt-image-1", image=("a.png", make_image(), "image/png"), prompt="make it blue")
    assert caught.value.code == "content_policy_violation"
    assert fake.received == []


async def test_missing_weights_stop_start_up_when_required(tmp_path: Path, fake_openai, start_gateway) -> None:
    _, upstream_url = fake_openai
    settings = make_settings(tmp_path, upstream_url, classifier={"enabled": True, "required": True, "checkpoint": str(tmp_path / "missing.pt"), "pretrained": None})
    with pytest.raises(Exception, match="classifier could not be loaded"):
        await start_gateway(settings, stages=full_stages)


async def test_a_misspelled_prompt_is_blocked_unless_the_tenant_turns_misspellings_off(
    tmp_path: Path, fake_openai, start_gateway, upstream_key: str
) -> None:
    """"decapitaed" is one edit from the lexicon's "decapitated" and no word of any language: read
    as it, the prompt is violence. The audit record names the lexicon word; globex turns the
    reading off in its prompt policy and the same prompt goes through."""
    fake, upstream_url = fake_openai
    settings = make_settings(tmp_path, upstream_url)
    tenants = dict(settings.tenants)
    tenants["globex"] = tenants["globex"].model_copy(update={"prompt_policy": {"misspellings": False}})
    settings = settings.model_copy(update={"tenants": tenants})
    server, base_url = await start_gateway(settings, stages=full_stages)
    prompt = "decapitaed body in the street, photoreal"
    async with client(base_url) as sdk:
        with pytest.raises(openai.BadRequestError) as caught:
            await sdk.images.generate(model="gpt-image-1", prompt=prompt)
    assert caught.value.code == "content_policy_violation"
    assert "decapit" not in caught.value.body["message"].lower()
    record = await server.app[GATEWAY].audit.get(caught.value.response.headers["X-Imagegate-Audit-Id"])
    decision = next(d for d in record["decisions"] if d["stage"] == "prompt_filter")
    assert decision["action"] == "block" and decision["category"] == "violence"
    assert "'decapitated'" in str(decision) and "decapitaed" not in str(decision)
    assert fake.received == []
    async with openai.AsyncOpenAI(base_url=base_url, api_key=OTHER_TENANT_KEY, max_retries=0) as other:
        allowed = await other.images.generate(model="gpt-image-1", prompt=prompt)
    assert len(allowed.data) == 1 and len(fake.received) == 1
