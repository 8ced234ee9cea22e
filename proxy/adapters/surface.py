"""What a client-facing API surface is: the routes it serves, how it reads requests and renders answers.

A surface speaks one provider's wire format to clients (OpenAI's Images API, Stability's multipart
forms, BFL's submit-and-poll jobs...). It parses a request into the provider-neutral
`GenerationRequest` and renders a finished `Exchange` (or a stored job) back in the same format, so
the provider's own SDK keeps working with only its base URL changed. Surfaces never do policy, never
call an upstream and never touch the stores: `proxy.app` runs the pipeline between `parse` and
`render_result`, whichever provider ends up serving the model.

Two kinds of route:

- `generate` / `edit`: the pipeline runs while the client waits; `render_result` answers.
- `submit` / `poll`: an asynchronous job (`proxy.jobs`). The submit answers at once with a job id;
  the job is processed (moderated, signed, audited) exactly once when imagegate collects the
  upstream result, and every poll renders the stored, processed outcome with `render_job`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from aiohttp import web

from ..errors import ImagegateError, PayloadTooLargeError
from ..exchange import Exchange, GenerationRequest

if TYPE_CHECKING:
    from ..jobs import JobRecord

RouteKind = Literal["generate", "edit", "submit", "poll", "custom"]


@dataclass(frozen=True)
class SurfaceRoute:
    method: str
    path: str
    kind: RouteKind
    #: For `custom` routes only: the handler itself (for example a secret or a model listing).
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]] | None = None
    #: Free-form data the surface reads back in `parse` (the Stability model family of a path...).
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ParseContext:
    default_model: str
    max_body_bytes: int
    #: Refuses a client webhook URL that must not be called (SSRF guard); raises `UnsafeURLError`.
    check_webhook: Callable[[str], None] | None = None


@runtime_checkable
class Surface(Protocol):
    #: Short name; non-OpenAI surfaces are mounted under `/{name}` (`/bfl/v1/flux-dev`).
    name: str

    def routes(self) -> Sequence[SurfaceRoute]: ...

    def credential(self, request: web.Request) -> str | None:
        """The imagegate API key the client presented, where this provider's SDK puts its key."""
        ...

    async def parse(self, request: web.Request, route: SurfaceRoute, context: ParseContext) -> GenerationRequest: ...

    def render_result(self, exchange: Exchange, request: web.Request) -> web.Response: ...

    def render_error(self, error: ImagegateError) -> web.Response: ...


@runtime_checkable
class JobSurface(Surface, Protocol):
    """A surface whose clients submit jobs and collect them later (BFL, Replicate, fal)."""

    def job_id(self, request: web.Request) -> str:
        """The job a poll route names (path or query)."""
        ...

    def render_submitted(self, job: JobRecord, request: web.Request) -> web.Response: ...

    def render_job(self, job: JobRecord, request: web.Request, urls: list[str]) -> web.Response:
        """The job as the provider would show it; `urls` are fresh signed imagegate URLs."""
        ...

    def webhook_body(self, job: JobRecord, urls: list[str]) -> dict[str, Any]:
        """What is delivered to the client's webhook once the job is processed."""
        ...


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def base_url(request: web.Request, public_base_url: str | None) -> str:
    return (public_base_url or f"{request.scheme}://{request.host}").rstrip("/")


def check_length(request: web.Request, limit: int) -> None:
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLargeError(f"The request body is {request.content_length} bytes; the limit is {limit}.")


async def read_limited(request: web.Request, limit: int) -> bytes:
    """The whole body, refusing it as soon as it passes `limit` bytes (never buffers more)."""
    check_length(request, limit)
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        total += len(chunk)
        if total > limit:
            raise PayloadTooLargeError(f"The request body is larger than the limit of {limit} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)
