"""Everything about one call, in one typed object that travels through the stage chain.

`GenerationRequest` and `GenerationResult` are the normalised, provider-neutral forms that stages
read; adapters translate wire formats to and from them, so no stage ever sees a wire format.
`Exchange` adds who is asking, the decisions taken so far, costs, timings and the outcome.
Nothing here does I/O.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass, field
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from policies.decisions import Action, Decision, most_severe

from .errors import ImagegateError

Operation = Literal["generate", "edit", "passthrough", "verify"]

MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
FORMATS = {value: key for key, value in MEDIA_TYPES.items()}


def sniff_media_type(data: bytes) -> str | None:
    """The image media type from magic bytes (PNG, JPEG, WebP), or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


@dataclass(slots=True)
class InputImage:
    """An image the client sent (edit input or mask)."""

    data: bytes
    media_type: str
    filename: str = "image"
    role: Literal["image", "mask"] = "image"

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(slots=True)
class GenerationRequest:
    """A provider-neutral image request."""

    operation: Operation
    model: str
    prompt: str
    negative_prompt: str | None = None
    n: int = 1
    size: str | None = None
    quality: str | None = None
    output_format: str = "png"
    response_format: Literal["b64_json", "url"] = "b64_json"
    user: str | None = None
    images: list[InputImage] = field(default_factory=list)
    mask: InputImage | None = None
    #: Provider-specific fields passed to the upstream unchanged (background, style, ...).
    extra: dict[str, Any] = field(default_factory=dict)

    def texts(self) -> dict[str, str]:
        """Every text field that reaches the model, by name: all of them must be screened."""
        texts = {"prompt": self.prompt}
        if self.negative_prompt:
            texts["negative_prompt"] = self.negative_prompt
        for key, value in self.extra.items():
            if isinstance(value, str) and key in {"style", "style_preset", "prompt_upsampling"}:
                texts[key] = value
        return texts

    @property
    def media_type(self) -> str:
        return MEDIA_TYPES.get(self.output_format, "image/png")


@dataclass(slots=True)
class GeneratedImage:
    """One image the upstream returned, as it moves through moderation and signing."""

    data: bytes
    media_type: str
    revised_prompt: str | None = None
    #: Set by the output classifier: the image is not released to the client.
    withheld: bool = False
    #: Set by the output classifier: `data` is a blurred copy of the original.
    blurred: bool = False
    #: The classifier's verdict as data, for the audit record and the manifest.
    verdict: dict[str, Any] | None = None
    #: Set by the provenance stage.
    manifest_id: str | None = None
    upstream_manifest: bool = False
    #: Set when the image is stored for a URL response.
    asset_url: str | None = None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(slots=True)
class GenerationResult:
    """What the upstream answered, normalised."""

    provider: str
    model: str
    images: list[GeneratedImage]
    created: int = field(default_factory=lambda: int(time.time()))
    usage: dict[str, Any] | None = None
    #: Provider metadata worth keeping (job id, seed, background, size, quality ...).
    metadata: dict[str, Any] = field(default_factory=dict)
    upstream_status: int = 200
    upstream_latency_s: float = 0.0


@dataclass(slots=True)
class Caller:
    """Who is asking: the authenticated tenant, the key used, and the end user."""

    tenant: str
    key_id: str
    end_user: str | None = None
    is_admin: bool = False


def new_request_id() -> str:
    return "req_" + uuid.uuid4().hex


@dataclass(slots=True)
class Exchange:
    """One call from arrival to audit. Stages read and write it; nothing else is shared."""

    route: str
    operation: Operation
    request_id: str = field(default_factory=new_request_id)
    client_address: str | None = None
    started_at: float = field(default_factory=time.time)
    started_monotonic: float = field(default_factory=time.perf_counter)
    caller: Caller | None = None
    #: The API key the client presented; read by the authenticate stage, never logged or audited.
    credential: str | None = field(default=None, repr=False)
    #: The end user named by a header (`X-Imagegate-User`), before the body is read.
    end_user_header: str | None = None
    #: Reads and parses the body into a `GenerationRequest`; set by the handler from the API surface,
    #: called by the read-request stage after authentication so strangers cannot make us read bodies.
    read_request: Callable[[], Awaitable[GenerationRequest]] | None = field(default=None, repr=False)
    request: GenerationRequest | None = None
    result: GenerationResult | None = None
    provider: str | None = None
    decisions: list[Decision] = field(default_factory=list)
    #: The error that ends the exchange; set by `fail`. Rendered in the provider's shape.
    error: ImagegateError | None = None
    #: Extra response headers stages want the client to see (limits, cost, ...).
    response_headers: dict[str, str] = field(default_factory=dict)
    cost_estimate_usd: float | None = None
    cost_usd: float | None = None
    licence: dict[str, Any] | None = None
    #: Seconds spent per stage and hook, e.g. {"prompt_filter.on_request": 0.00004}.
    timings: dict[str, float] = field(default_factory=dict)
    #: Notes stages leave for later stages (by stage name); never read by the audit as-is.
    notes: dict[str, Any] = field(default_factory=dict)
    policy_version: str = ""
    audit_id: str | None = None
    status: int | None = None

    @property
    def stopped(self) -> bool:
        return self.error is not None

    def fail(self, error: ImagegateError) -> None:
        """Stop the exchange with `error`; later request stages and the upstream are skipped."""
        if self.error is None:
            self.error = error

    def decide(self, decision: Decision) -> Decision:
        self.decisions.append(decision)
        return decision

    def skip(self, stage: str, reason: str) -> None:
        """Record that a stage did nothing (not configured); never a verdict."""
        self.decisions.append(Decision(stage=stage, action=Action.SKIPPED, reason=reason))

    @property
    def outcome(self) -> Action:
        """The most severe action taken on this exchange, for metrics and audit filters."""
        return most_severe([decision.action for decision in self.decisions])

    def elapsed_s(self) -> float:
        return time.perf_counter() - self.started_monotonic
