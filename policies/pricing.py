"""The price table and what an image request costs: an estimate before, the actual cost after.

`PriceTable` is loaded from `policies/data/prices.yaml` (or a file the operator names) and covers
the pricing shapes providers really use: per image by quality and size, tokens, per megapixel,
flat per image, and batch discounts. `estimate_cost` prices a request before it goes upstream (what
the budget holds; it errs on the dear side when the request leaves quality or size to the
provider); `actual_cost` prices what came back (from the provider's reported token usage where the
model is token-priced, otherwise from the images actually returned). Nothing is charged for a
request that produced no image.

Pure: no network, no clock, no exchange. A model the table does not know returns None; the caller
decides (the limits stage applies a configured fallback price).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Protocol

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

DEFAULT_PRICES_PATH = Path(__file__).parent / "data" / "prices.yaml"
MEGAPIXEL = 1024 * 1024
_SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")
_SEPARATORS = re.compile(r"[^a-z0-9]+")

Tier = Literal["standard", "batch"]


class GenerationRequest(Protocol):
    """What pricing reads from a request (`proxy.exchange.GenerationRequest` fits)."""

    @property
    def operation(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def prompt(self) -> str: ...
    @property
    def n(self) -> int: ...
    @property
    def size(self) -> str | None: ...
    @property
    def quality(self) -> str | None: ...
    @property
    def images(self) -> Sequence[Any]: ...
    @property
    def mask(self) -> Any: ...


class GenerationResult(Protocol):
    """What pricing reads from a result (`proxy.exchange.GenerationResult` fits)."""

    @property
    def images(self) -> Sequence[Any]: ...
    @property
    def usage(self) -> dict[str, Any] | None: ...
    @property
    def metadata(self) -> dict[str, Any]: ...


def normalise_model_id(model_id: str) -> str:
    return _SEPARATORS.sub("", model_id.strip().lower())


def parse_size(size: str | None) -> tuple[int, int] | None:
    match = _SIZE.match(size or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TokenPrices(_Frozen):
    text_input_per_million: float = Field(0.0, ge=0)
    image_input_per_million: float = Field(0.0, ge=0)
    image_output_per_million: float = Field(0.0, ge=0)
    #: Tokens assumed per input image when estimating an edit.
    edit_input_image_tokens: int = Field(0, ge=0)


class MegapixelPrices(_Frozen):
    first_usd: float = Field(ge=0)
    additional_usd: float = Field(ge=0)
    #: Per megapixel of each input image (edits); input images count as one megapixel each.
    input_usd: float = Field(0.0, ge=0)


class ModelPrice(_Frozen):
    aliases: list[str] = Field(default_factory=list)
    per_image: dict[str, dict[str, float]] | None = None
    tokens: TokenPrices | None = None
    per_megapixel: MegapixelPrices | None = None
    flat_usd: float | None = Field(None, ge=0)
    estimate_quality: str | None = None
    default_size: str = "1024x1024"
    batch_discount: float = Field(0.0, ge=0, lt=1)
    sources: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_shape(self) -> ModelPrice:
        if self.per_image is None and self.per_megapixel is None and self.flat_usd is None:
            raise ValueError("a model needs per_image, per_megapixel or flat_usd (tokens alone cannot be estimated)")
        if self.estimate_quality and self.per_image and self.estimate_quality not in self.per_image:
            raise ValueError(f"estimate_quality {self.estimate_quality!r} is not a tier of per_image")
        return self

    # -- shapes ------------------------------------------------------------------------------------

    def image_usd(self, quality: str | None, size: str | None) -> float:
        """One output image at this quality and size, before any discount."""
        if self.flat_usd is not None:
            return self.flat_usd
        if self.per_megapixel is not None:
            width, height = parse_size(size) or parse_size(self.default_size) or (1024, 1024)
            megapixels = max(1, math.ceil(width * height / MEGAPIXEL))
            return self.per_megapixel.first_usd + (megapixels - 1) * self.per_megapixel.additional_usd
        assert self.per_image is not None
        tiers = self.per_image
        if quality not in tiers:
            quality = self.estimate_quality or max(tiers, key=lambda tier: max(tiers[tier].values()))
        table = tiers[quality]
        if size in table:
            return table[size]
        dearest = max(table, key=table.__getitem__)
        wanted, listed = parse_size(size), parse_size(dearest)
        if wanted is None or listed is None:
            return table[dearest]
        return table[dearest] * max(1.0, (wanted[0] * wanted[1]) / (listed[0] * listed[1]))

    def discount(self, tier: Tier) -> float:
        return 1.0 - self.batch_discount if tier == "batch" else 1.0


class PriceTable(_Frozen):
    version: str
    currency: Literal["USD"] = "USD"
    free_provider_kinds: list[str] = Field(default_factory=list)
    #: USD per credit for providers that bill in credits and report them with each result
    #: (`cost_hint.credits`): the provider's own figure is the actual cost.
    credit_usd: dict[str, float] = Field(default_factory=dict)
    models: dict[str, ModelPrice]
    _index: dict[str, ModelPrice] = PrivateAttr(default_factory=dict)

    def model_post_init(self, context: Any) -> None:
        for name, price in self.models.items():
            for alias in (name, *price.aliases):
                self._index[normalise_model_id(alias)] = price

    @classmethod
    def load(cls, path: Path | None = None) -> PriceTable:
        return _load(str(path or DEFAULT_PRICES_PATH))

    def price_for(self, model: str) -> ModelPrice | None:
        return self._index.get(normalise_model_id(model))

    def is_free(self, provider_kind: str | None) -> bool:
        return provider_kind in self.free_provider_kinds

    # -- costs -------------------------------------------------------------------------------------

    def estimate_cost(self, request: GenerationRequest, provider_kind: str | None, *, tier: Tier = "standard") -> float | None:
        """What the request should cost, before it is sent; None for a model not in the table."""
        if self.is_free(provider_kind):
            return 0.0
        price = self.price_for(request.model)
        if price is None:
            return None
        cost = price.image_usd(request.quality, request.size) * request.n
        inputs = len(request.images) + (1 if request.mask else 0)
        if price.tokens is not None:
            text_tokens = len(request.prompt) / 4  # about four characters a token in English
            cost += text_tokens * price.tokens.text_input_per_million / 1e6
            if request.operation == "edit":
                cost += inputs * price.tokens.edit_input_image_tokens * price.tokens.image_input_per_million / 1e6
        elif price.per_megapixel is not None and request.operation == "edit":
            cost += len(request.images) * price.per_megapixel.input_usd
        return round(cost * price.discount(tier), 6)

    def actual_cost(
        self,
        request: GenerationRequest,
        result: GenerationResult | None,
        provider_kind: str | None,
        *,
        tier: Tier = "standard",
    ) -> float | None:
        """What the request did cost: nothing without images; the provider's own figure when it
        reports one (credits, tokens); else the table's price for the size actually produced."""
        if result is None or not result.images or self.is_free(provider_kind):
            return 0.0
        hint = result.metadata.get("cost_hint") if isinstance(result.metadata.get("cost_hint"), dict) else {}
        credits = hint.get("credits")
        if provider_kind in self.credit_usd and isinstance(credits, (int, float)) and not isinstance(credits, bool) and credits >= 0:
            price = self.price_for(request.model)
            return round(credits * self.credit_usd[provider_kind] * (price.discount(tier) if price else 1.0), 6)
        price = self.price_for(request.model)
        if price is None:
            return None
        from_tokens = token_cost(price.tokens, result.usage) if price.tokens is not None else None
        if from_tokens is not None:
            cost = from_tokens
        else:
            quality = result.metadata.get("quality") or request.quality
            size = result.metadata.get("size") or _hinted_size(hint) or request.size
            cost = price.image_usd(quality, size) * len(result.images)
            if price.per_megapixel is not None and request.operation == "edit":
                cost += len(request.images) * price.per_megapixel.input_usd
        return round(cost * price.discount(tier), 6)


def _hinted_size(hint: dict[str, Any]) -> str | None:
    """The produced size from an adapter's cost hint, e.g. "1280x1024"."""
    width, height = hint.get("width"), hint.get("height")
    return f"{width}x{height}" if isinstance(width, int) and isinstance(height, int) else None


def token_cost(prices: TokenPrices, usage: dict[str, Any] | None) -> float | None:
    """USD from an OpenAI-style `usage` (input_tokens with text/image details, output_tokens)."""
    if not usage or not isinstance(usage.get("output_tokens"), (int, float)):
        return None
    details = usage.get("input_tokens_details") or {}
    input_tokens = float(usage.get("input_tokens") or 0)
    image_in = float(details.get("image_tokens") or 0)
    text_in = float(details.get("text_tokens", input_tokens - image_in) or 0)
    output = float(usage["output_tokens"])
    return (
        text_in * prices.text_input_per_million
        + image_in * prices.image_input_per_million
        + output * prices.image_output_per_million
    ) / 1e6


@lru_cache(maxsize=8)
def _load(path: str) -> PriceTable:
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    return PriceTable.model_validate(data)


def estimate_cost(
    request: GenerationRequest, provider_kind: str | None, *, table: PriceTable | None = None, tier: Tier = "standard"
) -> float | None:
    """`PriceTable.estimate_cost` with the shipped table by default."""
    return (table or PriceTable.load()).estimate_cost(request, provider_kind, tier=tier)


def actual_cost(
    request: GenerationRequest,
    result: GenerationResult | None,
    provider_kind: str | None,
    *,
    table: PriceTable | None = None,
    tier: Tier = "standard",
) -> float | None:
    """`PriceTable.actual_cost` with the shipped table by default."""
    return (table or PriceTable.load()).actual_cost(request, result, provider_kind, tier=tier)
