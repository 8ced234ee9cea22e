"""The shipped price table and the cost of a request: estimate before, actual after."""

from __future__ import annotations

import pytest

from policies.pricing import PriceTable, actual_cost, estimate_cost, token_cost
from proxy.exchange import (
    GeneratedImage,
    GenerationRequest,
    GenerationResult,
    InputImage,
)


def request(model: str, *, quality: str | None = None, size: str | None = None, n: int = 1, prompt: str = "", edit: bool = False) -> GenerationRequest:
    return GenerationRequest(
        operation="edit" if edit else "generate", model=model, prompt=prompt, n=n, size=size, quality=quality,
        images=[InputImage(b"x", "image/png")] if edit else [],
    )


def result(n: int = 1, usage: dict | None = None, **metadata: str) -> GenerationResult:
    return GenerationResult("p", "m", [GeneratedImage(b"", "image/png") for _ in range(n)], usage=usage, metadata=dict(metadata))


@pytest.fixture(scope="module")
def table() -> PriceTable:
    return PriceTable.load()


@pytest.mark.parametrize(
    ("quality", "size", "usd"),
    [("low", "1024x1024", 0.006), ("medium", "1024x1024", 0.053), ("high", "1024x1024", 0.211), ("high", "1536x1024", 0.165)],
)
def test_gpt_image_2_per_image_tiers(table: PriceTable, quality: str, size: str, usd: float) -> None:
    assert estimate_cost(request("gpt-image-2", quality=quality, size=size), "openai", table=table) == usd


def test_quality_tiers_differ_35x_and_auto_holds_the_dearest(table: PriceTable) -> None:
    low = table.estimate_cost(request("gpt-image-2", quality="low", size="1024x1024"), "openai")
    high = table.estimate_cost(request("gpt-image-2", quality="high", size="1024x1024"), "openai")
    assert high / low == pytest.approx(35, rel=0.01)
    assert table.estimate_cost(request("gpt-image-1", quality="auto"), "openai") == 0.25
    assert table.estimate_cost(request("dall-e-3"), "openai") == 0.08  # estimate_quality: standard, dearest size


def test_sizes_not_in_the_table_scale_by_pixels(table: PriceTable) -> None:
    assert table.estimate_cost(request("gpt-image-2", quality="low", size="2048x2048"), "openai") == pytest.approx(0.024)


def test_per_megapixel_flux_2_pro(table: PriceTable) -> None:
    assert table.estimate_cost(request("black-forest-labs/flux-2-pro", size="1024x1024"), "bfl") == 0.03
    assert table.estimate_cost(request("flux.2-pro", size="2048x2048"), "bfl") == 0.075
    assert table.estimate_cost(request("FLUX.2 [pro]", size="1920x1080", n=2), "bfl") == 0.09
    assert table.estimate_cost(request("flux-2-pro", size="1024x1024", edit=True), "bfl") == 0.045


def test_flat_per_image_imagen_4_fast(table: PriceTable) -> None:
    assert table.estimate_cost(request("imagen-4.0-fast-generate-001", size="2048x2048", n=3), "google") == 0.06


def test_batch_discount(table: PriceTable) -> None:
    standard = table.estimate_cost(request("gpt-image-1", quality="high", size="1024x1024"), "openai")
    batch = table.estimate_cost(request("gpt-image-1", quality="high", size="1024x1024"), "openai", tier="batch")
    assert (standard, batch) == (0.167, 0.0835)
    assert table.estimate_cost(request("imagen-4-fast"), "google", tier="batch") == 0.02  # no batch tier listed


def test_token_based_actual_cost_from_usage(table: PriceTable) -> None:
    usage = {"input_tokens": 50, "input_tokens_details": {"text_tokens": 40, "image_tokens": 10}, "output_tokens": 4160}
    cost = actual_cost(request("gpt-image-1", quality="high"), result(1, usage), "openai", table=table)
    assert cost == pytest.approx((40 * 5 + 10 * 10 + 4160 * 40) / 1e6)
    assert token_cost(table.price_for("gpt-image-1").tokens, {"input_tokens": 10}) is None  # no output count


def test_actual_cost_without_usage_counts_the_images_returned(table: PriceTable) -> None:
    req = request("gpt-image-2", quality="medium", size="1024x1024", n=4)
    assert table.actual_cost(req, result(2), "openai") == 0.106
    assert table.actual_cost(request("gpt-image-2", quality="auto"), result(1, quality="low", size="1024x1024"), "openai") == 0.006


def test_nothing_generated_costs_nothing_and_the_demo_is_free(table: PriceTable) -> None:
    req = request("gpt-image-1", quality="high")
    assert table.actual_cost(req, None, "openai") == 0.0
    assert table.actual_cost(req, result(0), "openai") == 0.0
    assert table.estimate_cost(req, "demo") == 0.0 and table.actual_cost(req, result(1), "demo") == 0.0


@pytest.mark.parametrize(
    ("model", "usd"),
    [("stable-image-core", 0.03), ("stable-image-ultra", 0.08), ("sd3.5-large", 0.065), ("stability-inpaint", 0.03),
     ("flux-dev", 0.025), ("flux-pro-1.1-ultra", 0.06), ("flux-kontext-max", 0.08), ("black-forest-labs/flux-schnell", 0.003)],
)
def test_stability_bfl_and_replicate_ids_have_list_prices(table: PriceTable, model: str, usd: float) -> None:
    assert estimate_cost(request(model), "stability", table=table) == usd


def test_per_megapixel_actual_cost_reads_the_produced_size_from_the_cost_hint(table: PriceTable) -> None:
    """An adapter that does not echo `size` still says what it produced: 2048x2048 is 4 MP of FLUX.2 pro."""
    produced = GenerationResult("p", "m", [GeneratedImage(b"", "image/png")], metadata={"cost_hint": {"images": 1, "width": 2048, "height": 2048}})
    assert actual_cost(request("flux-2-pro"), produced, "bfl", table=table) == 0.075
    assert actual_cost(request("flux-2-pro"), result(1), "bfl", table=table) == 0.03


def test_reported_credits_count_only_for_providers_that_bill_in_them(table: PriceTable) -> None:
    hinted = GenerationResult("p", "m", [GeneratedImage(b"", "image/png")], metadata={"cost_hint": {"images": 1, "credits": 7}})
    assert actual_cost(request("flux-pro-1.1"), hinted, "bfl", table=table) == 0.07
    assert actual_cost(request("flux-pro-1.1"), hinted, "replicate", table=table) == 0.04  # no credit price: list price
    bogus = GenerationResult("p", "m", [GeneratedImage(b"", "image/png")], metadata={"cost_hint": {"images": 1, "credits": True}})
    assert actual_cost(request("flux-pro-1.1"), bogus, "bfl", table=table) == 0.04


def test_unknown_model_is_none(table: PriceTable) -> None:
    assert table.estimate_cost(request("mystery-model"), "openai") is None
    assert table.actual_cost(request("mystery-model"), result(1), "openai") is None


def test_every_shipped_model_has_a_source(table: PriceTable) -> None:
    assert all(price.sources for price in table.models.values())
