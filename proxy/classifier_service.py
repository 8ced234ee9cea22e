"""The image classifier as a service of its own: `imagegate classifier serve`, and the proxies' client.

By default every imagegate replica loads the CLIP model in process. On GPU nodes one classifier
service can serve many CPU proxies instead: each proxy sends the images of an exchange to
`POST /v1/classify`, and the service's one `BatchingRunner` batches images from every proxy
together (one model, one queue, batches filled from all callers).

Wire format (the same package on both sides):

    POST /v1/classify                      multipart/form-data, one `image` part per image
    Authorization: Bearer <token>          the shared service token (unless started with --no-auth)
    X-Request-Id: <the proxy's request id> carried into the service's logs

    200 {"object": "classification", "model": "...", "calibrated": false,
         "results": [{"index": 0, "verdict": {...ImageVerdict.to_dict()...}},
                     {"index": 1, "error": {"type": "image_decode_error", "message": "..."}}]}

Errors are JSON `{"error": {"message", "type", "code"}}` with 400 (bad body), 401 (token), 413
(too large), 503 (not loaded or shutting down). The client (`RemoteClassifier`) turns every failure
of the call (refused, reset, timed out, a non-200, a malformed answer) into `ClassifierServiceError`
for the whole exchange, which the pipeline's failure policy decides: closed by default (503, nothing
unclassified released). Only an undecodable image fails alone, as it does in process.

Must never: classify on the event loop, release a verdict that lost its `uncalibrated` marking on
the way, or retry a request past the configured timeout.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from .adapters.surface import bearer_token, check_length, next_part, open_multipart, read_part
from .errors import AuthenticationError, ImagegateError, InvalidRequestError, StageFailedError
from .metrics import LATENCY_BUCKETS, RunnerCollector

log = structlog.get_logger("imagegate.classifier_service")

CLASSIFY_PATH = "/v1/classify"
DEFAULT_TOKEN_ENV = "IMAGEGATE_CLASSIFIER_TOKEN"


class ClassifierServiceError(Exception):
    """The classifier service could not classify this exchange's images (a stage failure)."""


class RemoteClassifierSettings(BaseModel):
    """`classifier.remote` in a proxy's config: where the classifier service is, and how long to wait."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1)  # e.g. http://imagegate-classifier:8090
    timeout_s: float = Field(default=10.0, gt=0, le=600)  # the whole call, images sent to verdicts back
    connect_timeout_s: float = Field(default=2.0, gt=0, le=60)
    token_env: str | None = DEFAULT_TOKEN_ENV  # the variable holding the shared token; None: no token
    max_connections: int = Field(default=64, ge=1, le=4096)


# -- the service ------------------------------------------------------------------------------------


@dataclass
class ServiceOptions:
    token: str | None  # None: no authentication (only behind a network boundary, say so loudly)
    max_images: int = 64
    max_body_bytes: int = 50 * 1024 * 1024
    body_timeout_s: float = 60.0


class ClassifierServiceState:
    """What the service app holds: the runner (once loaded), options and metrics."""

    def __init__(self, options: ServiceOptions, runner: Any = None) -> None:
        self.options = options
        self.runner = runner
        self.model: str | None = None
        self.calibrated: bool | None = None
        self.registry = CollectorRegistry()
        self.registry.register(RunnerCollector(lambda: self.runner))
        self.requests = Counter(
            "imagegate_classifier_service_requests_total", "Classify requests by HTTP status.", ["status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "imagegate_classifier_service_latency_seconds", "Time from request to verdicts, per request.",
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )


STATE: web.AppKey[ClassifierServiceState] = web.AppKey("classifier_service", ClassifierServiceState)


async def _read_images(request: web.Request, options: ServiceOptions) -> list[bytes]:
    if not request.content_type.startswith("multipart/"):
        raise InvalidRequestError(
            "Send the images as multipart/form-data, one `image` part per image.", code="invalid_multipart"
        )
    check_length(request, options.max_body_bytes)
    reader = await open_multipart(request)
    images: list[bytes] = []
    total = 0
    while (part := await next_part(reader)) is not None:
        if part.name != "image":
            raise InvalidRequestError(f"Unexpected form field {part.name!r}; only `image` parts are accepted.", param=part.name)
        if len(images) >= options.max_images:
            raise InvalidRequestError(f"At most {options.max_images} images per request.", param="image")
        data = await read_part(part, already=total, limit=options.max_body_bytes)
        total += len(data)
        images.append(data)
    if not images:
        raise InvalidRequestError("No `image` part in the request.", param="image")
    return images


async def classify_handler(request: web.Request) -> web.Response:
    from classifiers.errors import ClassifierClosedError, ImageDecodeError

    state = request.app[STATE]
    started = time.perf_counter()
    status = 500
    try:
        token = state.options.token
        if token is not None and not hmac.compare_digest((bearer_token(request) or "").encode(), token.encode()):
            raise AuthenticationError("Missing or wrong classifier service token.")
        runner = state.runner
        if runner is None or not runner.running:
            raise StageFailedError("The classifier is not loaded yet.")
        try:
            images = await asyncio.wait_for(_read_images(request, state.options), state.options.body_timeout_s)
        except TimeoutError:
            raise InvalidRequestError("The request body was not received in time.", status=408, code="request_timeout") from None
        outcomes = await asyncio.gather(*(runner.classify(image) for image in images), return_exceptions=True)
        results: list[dict[str, Any]] = []
        for index, outcome in enumerate(outcomes):
            if isinstance(outcome, ImageDecodeError):
                results.append({"index": index, "error": {"type": "image_decode_error", "message": str(outcome)}})
            elif isinstance(outcome, ClassifierClosedError):
                raise StageFailedError("The classifier service is shutting down; retry on another replica.")
            elif isinstance(outcome, BaseException):
                log.error("classify_failed", error=type(outcome).__name__, detail=str(outcome)[:500])
                raise ImagegateError("The classifier failed on this batch.", code="classifier_error")
            else:
                results.append({"index": index, "verdict": outcome.to_dict()})
        status = 200
        return web.json_response(
            {"object": "classification", "model": state.model, "calibrated": state.calibrated, "results": results}
        )
    except ImagegateError as error:
        status = error.status
        raise
    finally:
        state.requests.labels(str(status)).inc()
        state.latency.observe(time.perf_counter() - started)


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    ready = state.runner is not None and state.runner.running
    body = {"ready": ready, "model": state.model, "calibrated": state.calibrated}
    return web.json_response(body, status=200 if ready else 503)


async def _metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[STATE].registry)
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


def create_classifier_app(classifier_settings: Any, options: ServiceOptions) -> web.Application:
    """The classifier service: loads the model at start-up (in a worker thread), serves verdicts.

    `classifier_settings` is a `ClassifierSettings`; a model that cannot be loaded stops start-up
    (a classifier service without its model has no purpose).
    """
    from .app import error_middleware, request_id_middleware

    state = ClassifierServiceState(options)
    # Errors in the gateway's own (OpenAI) shape, `{"error": {"message", "type", "code", "param"}}`.
    app = web.Application(middlewares=[request_id_middleware, error_middleware], client_max_size=options.max_body_bytes)
    app[STATE] = state

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        from classifiers import BatchingRunner, load_classifier

        classifier = await asyncio.to_thread(load_classifier, classifier_settings)
        runner = BatchingRunner(
            classifier, max_batch=classifier_settings.batch_size, max_wait_ms=classifier_settings.max_batch_wait_ms,
            decode_threads=classifier_settings.decode_threads,
        )
        await runner.start()
        state.model, state.calibrated = classifier.model_label, classifier.calibrated
        state.runner = runner
        log.info(
            "classifier_service_started", model=state.model, calibrated=state.calibrated,
            authentication="token" if options.token else "NONE",
        )
        try:
            yield
        finally:
            state.runner = None
            await runner.close()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_post(CLASSIFY_PATH, classify_handler)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    return app


# -- the proxies' client ----------------------------------------------------------------------------


class RemoteClassifier:
    """Sends an exchange's images to the classifier service; one connection pool per process."""

    def __init__(self, settings: RemoteClassifierSettings, environ: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.url = settings.url.rstrip("/")
        environ = dict(os.environ) if environ is None else environ
        self._token: str | None = None
        if settings.token_env:
            self._token = environ.get(settings.token_env) or None
            if self._token is None:
                raise ValueError(
                    f"classifier.remote.token_env names {settings.token_env!r}, which is not set "
                    "(set it to the classifier service's token, or token_env: null for a service run with --no-auth)"
                )
        self._session: aiohttp.ClientSession | None = None
        self.in_flight = 0
        self.outcomes: Counter | None = None

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.settings.max_connections),
                timeout=aiohttp.ClientTimeout(total=self.settings.timeout_s, sock_connect=self.settings.connect_timeout_s),
            )

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _headers(self, request_id: str | None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        if request_id:
            headers["X-Request-Id"] = request_id
        return headers

    async def ready(self) -> bool:
        """Whether the service answers its readiness probe (within the connect timeout)."""
        if self._session is None:
            return False
        try:
            async with self._session.get(
                f"{self.url}/readyz", timeout=aiohttp.ClientTimeout(total=self.settings.connect_timeout_s)
            ) as response:
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def classify(self, images: list[bytes], request_id: str | None = None) -> list[Any]:
        """One `ImageVerdict` or `ImageDecodeError` per image; raises `ClassifierServiceError`."""
        from classifiers.errors import ImageDecodeError
        from classifiers.verdict import ImageVerdict

        if self._session is None:
            raise ClassifierServiceError("the classifier service client is not started")
        form = aiohttp.FormData()
        for index, image in enumerate(images):
            form.add_field("image", image, filename=f"{index}", content_type="application/octet-stream")
        outcome = "error"
        self.in_flight += 1
        try:
            try:
                async with self._session.post(
                    f"{self.url}{CLASSIFY_PATH}", data=form, headers=self._headers(request_id)
                ) as response:
                    if response.status != 200:
                        outcome = "http_error"  # the status itself is in the error message
                        detail = (await response.text())[:300]
                        raise ClassifierServiceError(
                            f"the classifier service at {self.url} answered {response.status}: {detail}"
                        )
                    body = await response.json()
            except TimeoutError:
                outcome = "timeout"
                raise ClassifierServiceError(
                    f"the classifier service at {self.url} did not answer within {self.settings.timeout_s} s"
                ) from None
            except aiohttp.ClientError as exc:
                outcome = "unreachable"
                raise ClassifierServiceError(
                    f"the classifier service at {self.url} is unreachable: {type(exc).__name__}: {exc}"
                ) from None
            try:
                results = body["results"]
                if not isinstance(results, list) or len(results) != len(images):
                    raise ValueError(f"{len(results) if isinstance(results, list) else 'no'} results for {len(images)} images")
                verdicts: list[Any] = []
                for index, item in enumerate(results):
                    if item.get("index") != index:
                        raise ValueError(f"result {index} carries index {item.get('index')!r}")
                    if "error" in item:
                        verdicts.append(ImageDecodeError(str(item["error"].get("message", "undecodable image"))))
                    else:
                        verdicts.append(ImageVerdict.from_dict(item["verdict"]))
            except (KeyError, TypeError, AttributeError, ValueError) as exc:
                outcome = "malformed"
                raise ClassifierServiceError(f"the classifier service at {self.url} sent a malformed answer: {exc}") from None
            outcome = "ok"
            return verdicts
        finally:
            self.in_flight -= 1
            if self.outcomes is not None:
                self.outcomes.labels(outcome).inc()
