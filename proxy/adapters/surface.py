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

The readers at the end of this module are how every surface reads a body: within the size limit
while reading, and with every malformed body (bad JSON, JSON nested too deep, broken multipart) a
4xx of the client's, never a 5xx.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from ..errors import ImagegateError, InvalidRequestError, PayloadTooLargeError
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

    def links_sidecars(self, request: web.Request) -> bool:
        """Whether this answer names its images' C2PA sidecars in `Link` headers (provenance
        sidecar/both mode): true where the body has no place per image for them (raw image bytes,
        Gemini's parts); bodies with one carry them inline, URL answers on their assets."""
        ...


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


#: Deepest nesting accepted in a client's JSON body. Image APIs take flat parameters; a deeper body
#: would parse here but could overflow the stack when it is encoded again for the upstream (a 5xx).
MAX_JSON_DEPTH = 32


def json_depth(value: Any) -> int:
    """How deeply `value` nests lists and objects (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth + 1)
        stack.extend((child, depth + 1) for child in children)
    return deepest


def load_json_object(raw: bytes, *, max_depth: int = MAX_JSON_DEPTH) -> dict[str, Any]:
    """A client's JSON body as an object, or an `invalid_json` error: malformed, not an object, or
    nested deeper than `max_depth` (CPython's parser raises RecursionError, not ValueError, on very
    deep input; either way it is the client's mistake, never a 5xx)."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise InvalidRequestError(
            "We could not parse the JSON body of your request: it is not valid JSON.", code="invalid_json"
        ) from exc
    if not isinstance(body, dict):
        raise InvalidRequestError("The JSON body must be an object.", code="invalid_json")
    if json_depth(body) > max_depth:
        raise InvalidRequestError(
            f"The JSON body nests deeper than {max_depth} levels; image requests take flat parameters.",
            code="invalid_json",
        )
    return body


_UNSAFE_FILENAME = re.compile(r"[^A-Za-z0-9._ -]+")


def safe_filename(filename: str | None, default: str) -> str:
    """A client's upload filename reduced to harmless characters (at most 100), for the upstream form.

    The name is the client's to choose and is sent on to the provider in a multipart header: control
    characters (a decoded `filename*=utf-8''a%0D%0A...`) would make the upstream request unsendable,
    and path separators mean nothing to a provider. Falls back to `default` when nothing is left.
    """
    cleaned = _UNSAFE_FILENAME.sub("_", filename or "").strip(" ._")[:100]
    return cleaned or default


#: What aiohttp raises on a malformed multipart body (a bad boundary, a part header with control
#: characters): the client's mistake, answered with `invalid_multipart`, never a 5xx.
MULTIPART_ERRORS: tuple[type[Exception], ...] = (ValueError, AssertionError, HttpProcessingError)


def malformed_multipart(exc: Exception) -> InvalidRequestError:
    """The client's error for a body aiohttp could not read as multipart (one line, bounded)."""
    reason = exc.message if isinstance(exc, HttpProcessingError) else str(exc)
    reason = " ".join(str(reason).split())[:200]
    return InvalidRequestError(f"Malformed multipart body: {reason}.", code="invalid_multipart")


async def open_multipart(request: web.Request) -> MultipartReader:
    try:
        return await request.multipart()
    except MULTIPART_ERRORS as exc:
        raise malformed_multipart(exc) from exc


async def next_part(reader: MultipartReader) -> BodyPartReader | None:
    """The next part of a flat multipart body, or None at its end."""
    try:
        part = await reader.next()
    except MULTIPART_ERRORS as exc:
        raise malformed_multipart(exc) from exc
    if part is not None and not isinstance(part, BodyPartReader):
        raise InvalidRequestError("Nested multipart bodies are not accepted.", code="invalid_multipart")
    return part


async def read_part(part: BodyPartReader, *, already: int, limit: int, chunk_size: int = 64 * 1024) -> bytes:
    """A part's bytes, refusing the body as soon as `already` plus what is read passes `limit`."""
    data = bytearray()
    try:
        while chunk := await part.read_chunk(chunk_size):
            if already + len(data) + len(chunk) > limit:
                raise PayloadTooLargeError(f"The request body is larger than the limit of {limit} bytes.")
            data.extend(chunk)
    except MULTIPART_ERRORS as exc:
        raise malformed_multipart(exc) from exc
    return bytes(data)
