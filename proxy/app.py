"""The aiohttp application: `create_app(settings)` builds everything, nothing lives in globals.

Routes: each API surface (`adapters.registry.default_surfaces`: OpenAI at `/v1/images/...`;
Stability, BFL, Replicate, fal and Google under `/{surface}/...`) registers its own routes, which run
the stage pipeline, directly or as asynchronous jobs (`proxy.jobs`); `/v1/assets/...` serves
imagegate's signed image URLs (and the images' C2PA sidecars, `<asset>.c2pa`); `/openapi.json` describes the routes; any other `/v1/...` path is
streamed to the pass-through provider; `/healthz`, `/readyz` and `/metrics` are for operators.
Middleware only does what crosses every request (request ids, turning stray exceptions into
provider-shaped errors). Every exchange ends with exactly one
audit record, written before the response is released; if it cannot be written, the client gets a
503 instead of the images (fail closed).
"""

from __future__ import annotations

import asyncio
from typing import Any
import re
from pathlib import Path
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import structlog
from aiohttp import web

from .adapters import openai_surface
from .adapters.base import Provider
from .adapters.demo import DemoProvider
from .adapters.openai_upstream import OpenAIUpstream
from .adapters.registry import build_provider, default_surfaces
from .adapters.surface import JobSurface, ParseContext, Surface, SurfaceRoute, base_url
from .admin import add_admin_routes
from .admin.review import retain_images
from .audit_record import build_record, exchange_outcome, new_audit_id
from .errors import AuditUnavailableError, ClientDisconnectedError, ImagegateError, InvalidRequestError, PermissionDeniedError
from . import openapi, provenance_api
from .exchange import Exchange, Operation, new_request_id
from .fetch import SafeFetcher, public_only
from .jobs import JobRunner, open_job_store
from .metrics import Metrics
from .tracing import Tracing, setup_tracing
from .passthrough import Passthrough
from .pipeline import Pipeline, Stage
from .settings import Settings
from .stages.authenticate import Authenticate
from .stages.limits import IdempotentReplay
from .stages.provenance import publish_sidecar, remember_sidecar_url, sidecar_links, sidecars
from .stages.read_request import ReadRequest
from .stages.skipped import SkippedStage
from .stages.upstream import Upstream
from .stores.assets import AssetNotFound, AssetStore, is_sidecar, media_type_of, new_name, open_asset_store, sidecar_of
from .stores.audit import AuditStore, AuditWriteError, open_audit_store
from .webhooks import WebhookSender, load_or_create_webhook_secret

log = structlog.get_logger("imagegate.app")

REQUEST_ID_HEADER = "X-Request-Id"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


@dataclass
class Gateway:
    """Everything a handler needs, built once by `create_app`."""

    settings: Settings
    metrics: Metrics
    audit: AuditStore
    assets: AssetStore
    providers: dict[str, Provider]
    authenticate: Authenticate
    pipeline: Pipeline
    passthrough: Passthrough | None
    fetcher: SafeFetcher
    policy_version: str
    #: Extra things to start and stop with the app (stages holding models, pools...).
    resources: list[Stage] = field(default_factory=list)
    #: Client-facing API surfaces (OpenAI, Stability, BFL...), each registering its own routes.
    surfaces: list[Surface] = field(default_factory=list)
    #: Asynchronous jobs of job-style surfaces (submit, poll, webhooks).
    jobs: JobRunner | None = None
    #: Image exchanges still running, also those whose client has gone (see `images_handler`).
    finishing: set[asyncio.Task[web.Response]] = field(default_factory=set)
    #: OpenTelemetry traces (`proxy.tracing`), None when off.
    tracing: Tracing | None = None


GATEWAY = web.AppKey("gateway", Gateway)
REQUEST_ID = "imagegate.request_id"

StageFactory = Callable[[Settings, "StageDeps"], Sequence[Stage]]


@dataclass
class StageDeps:
    """What stage factories may use."""

    providers: dict[str, Provider]
    authenticate: Authenticate
    metrics: Metrics


def build_providers(settings: Settings) -> dict[str, Provider]:
    providers: dict[str, Provider] = {}
    for name, config in settings.providers.items():
        if config.kind == "demo":
            providers[name] = DemoProvider(name, delay_s=config.delay_s)
        elif config.kind != "openai":
            providers[name] = build_provider(name, config, settings)
        else:
            providers[name] = OpenAIUpstream(
                name,
                base_url=config.base_url or "https://api.openai.com/v1",
                api_key=config.api_key(),
                timeout_s=config.timeout_s,
                connect_timeout_s=config.connect_timeout_s,
                image_url_hosts=config.image_url_hosts,
            )
    return providers


def default_stages(settings: Settings, deps: StageDeps) -> list[Stage]:
    """The chain, in order: the story of a request, top to bottom."""
    return [
        deps.authenticate,
        ReadRequest(settings.provider_for, body_timeout_s=settings.server.body_timeout_s),
        SkippedStage("limits", "rate limits and budgets are not configured"),
        SkippedStage("licence", "licence rules are not configured"),
        SkippedStage("prompt_filter", "the prompt filter is not configured"),
        SkippedStage("input_images", "the input-image classifier is not configured"),
        Upstream(deps.providers, deps.metrics),
        SkippedStage("output_classifier", "the output classifier is not configured"),
        SkippedStage("provenance", "C2PA signing is not configured"),
    ]


def create_app(
    settings: Settings,
    *,
    stages: StageFactory = default_stages,
    providers: dict[str, Provider] | None = None,
    audit: AuditStore | None = None,
    span_exporter: Any = None,
) -> web.Application:
    """The gateway app. `span_exporter` replaces the configured OpenTelemetry exporter (tests)."""
    data_dir = settings.server.data_dir
    metrics = Metrics()
    tracing = setup_tracing(settings.tracing, exporter=span_exporter)
    providers = providers if providers is not None else build_providers(settings)
    authenticate = Authenticate(settings.tenants)
    chain = list(stages(settings, StageDeps(providers, authenticate, metrics)))
    if audit is None:
        audit = open_audit_store(settings)
    passthrough = None
    if settings.passthrough_provider:
        config = settings.providers[settings.passthrough_provider]
        passthrough = Passthrough(
            base_url=config.base_url or "",
            api_key=config.api_key(),
            timeout_s=config.timeout_s,
            max_body_bytes=settings.server.max_body_bytes,
        )
    gateway = Gateway(
        settings=settings,
        metrics=metrics,
        audit=audit,
        assets=open_asset_store(settings.assets, data_dir),
        providers=providers,
        authenticate=authenticate,
        pipeline=Pipeline(chain, settings.failure_policy.model_dump()),
        passthrough=passthrough,
        fetcher=SafeFetcher(
            policy=(lambda address: True) if settings.server.fetch_private_addresses else public_only,
            max_bytes=settings.server.max_body_bytes,
        ),
        policy_version=settings.policy_version(),
        resources=chain,
        surfaces=default_surfaces(),
        jobs=JobRunner(
            open_job_store(settings.jobs),
            WebhookSender(policy=(lambda address: True) if settings.server.fetch_private_addresses else public_only),
            load_or_create_webhook_secret(data_dir / "webhook-signing.key"),
        ),
    )
    if tracing is not None:  # upstream calls become client spans and carry `traceparent`
        gateway.tracing = gateway.pipeline.tracing = tracing
        for traced in [*providers.values(), *([passthrough] if passthrough is not None else [])]:
            if hasattr(traced, "trace_configs"):
                traced.trace_configs = tracing.client_trace_configs
    app = web.Application(
        middlewares=[request_id_middleware, error_middleware],
        client_max_size=settings.server.max_body_bytes,
    )
    app[GATEWAY] = gateway
    app.cleanup_ctx.append(_lifecycle)
    for surface in gateway.surfaces:
        for route in surface.routes():
            app.router.add_route(route.method, route.path, surface_handler(surface, route))
    app.router.add_get("/v1/assets/{name}", asset_handler)
    app.router.add_post("/v1/provenance/verify", verify_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/openapi.json", openapi.openapi_handler)
    add_admin_routes(app)
    app.router.add_route("*", "/v1/{tail:.*}", passthrough_handler)
    return app


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    gateway = app[GATEWAY]
    await gateway.audit.start()
    await gateway.fetcher.start()
    started: list[Provider | Stage] = []
    purger = start_retention(gateway)
    try:
        for provider in gateway.providers.values():
            await provider.start()
            started.append(provider)
        for stage in gateway.resources:
            start = getattr(stage, "start", None)
            if start is not None:
                await start()
                started.append(stage)
        if gateway.passthrough is not None:
            await gateway.passthrough.start()
        if gateway.jobs is not None:
            await gateway.jobs.start()
        log.info("imagegate_started", policy_version=gateway.policy_version, stages=[s.name for s in gateway.pipeline.stages])
        yield
    finally:
        await asyncio.gather(*gateway.finishing, return_exceptions=True)  # orphaned exchanges: audit them
        if purger is not None:
            purger.cancel()
            await asyncio.gather(purger, return_exceptions=True)
        if gateway.jobs is not None:
            await gateway.jobs.close()
        if gateway.passthrough is not None:
            await gateway.passthrough.close()
        for resource in reversed(started):
            close = getattr(resource, "close", None)
            if close is not None:
                await close()
        await gateway.fetcher.close()
        await gateway.assets.close()
        await gateway.audit.close()
        if gateway.tracing is not None:
            await asyncio.to_thread(gateway.tracing.shutdown)  # flush the batched spans


def start_retention(gateway: Gateway) -> asyncio.Task[None] | None:
    """The background retention purge (`audit.purge_interval_s`; 0 disables it)."""
    interval = gateway.settings.audit.purge_interval_s
    if not interval:
        return None
    from .stores.audit_retention import retention_loop

    return asyncio.create_task(
        retention_loop(
            gateway.audit,
            gateway.settings.audit.retention,
            interval_s=interval,
            assets=gateway.assets,
            signer=getattr(gateway.audit, "signer", None),
            policy_version=gateway.policy_version,
        ),
        name="audit-retention",
    )


# -- middleware ------------------------------------------------------------------------------------


@web.middleware
async def request_id_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    incoming = request.headers.get(REQUEST_ID_HEADER, "")
    request_id = incoming if _REQUEST_ID.match(incoming) else new_request_id()
    request[REQUEST_ID] = request_id
    structlog.contextvars.bind_contextvars(request_id=request_id)
    try:
        response = await handler(request)
    finally:
        structlog.contextvars.unbind_contextvars("request_id")
    if not response.prepared:
        response.headers[REQUEST_ID_HEADER] = request_id
    return response


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Stray exceptions (routing errors, bugs) become OpenAI-shaped errors, never HTML or a stack."""
    try:
        return await handler(request)
    except ImagegateError as error:
        return openai_surface.render_error(error)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        error = ImagegateError(exc.reason or "error", status=exc.status, code=f"http_{exc.status}")
        error.type = "invalid_request_error"
        return openai_surface.render_error(error)
    except Exception:
        log.exception("unhandled_error", path=request.path)
        return openai_surface.render_error(ImagegateError("The gateway failed to handle the request."))


# -- handlers --------------------------------------------------------------------------------------


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def surface_handler(surface: Surface, route: SurfaceRoute) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The handler of one surface route; errors come out in that surface's shape."""

    async def handler(request: web.Request) -> web.StreamResponse:
        gateway = request.app[GATEWAY]
        try:
            if route.kind == "custom":
                assert route.handler is not None
                return await route.handler(request)
            if route.kind in ("submit", "poll"):
                assert gateway.jobs is not None and isinstance(surface, JobSurface)
                if route.kind == "poll":
                    return await gateway.jobs.poll(request, surface, gateway)
                return await gateway.jobs.submit(
                    request, surface, route, gateway, new_exchange=new_exchange, audit=_audit_then_release
                )
            return await images_handler(request, surface, route)
        except ImagegateError as error:
            return surface.render_error(error)

    return handler


def base_exchange(request: web.Request, operation: Operation, **fields: Any) -> Exchange:
    """An exchange with what every route records: request id, client, policy version, audit id."""
    exchange = Exchange(
        route=request.path,
        operation=operation,
        request_id=request[REQUEST_ID],
        client_address=request.remote,
        policy_version=request.app[GATEWAY].policy_version,
        **fields,
    )
    exchange.audit_id = new_audit_id()
    return exchange


def new_exchange(request: web.Request, surface: Surface, route: SurfaceRoute) -> Exchange:
    """The exchange for one image request on `surface`, its body read later by the read-request stage."""
    gateway = request.app[GATEWAY]
    settings = gateway.settings
    exchange = base_exchange(
        request,
        "edit" if route.kind == "edit" or route.options.get("operation") == "edit" else "generate",
        credential=surface.credential(request),
        # Capped like the body's `user` field (256 characters): it goes into every audit record.
        end_user_header=(request.headers.get("X-Imagegate-User") or None) and request.headers["X-Imagegate-User"][:256],
    )
    if request.headers.get("X-Imagegate-Use-Case"):
        exchange.notes["use_case"] = request.headers["X-Imagegate-Use-Case"][:128]
    if request.headers.get("Idempotency-Key"):
        # A retry replays the stored first response; on a job surface that is the submit's answer (the
        # same job id), kept by the job runner as soon as it is released (`proxy.jobs`).
        exchange.notes["idempotency_key"] = request.headers["Idempotency-Key"][:255]
    jobs = gateway.jobs
    context = ParseContext(
        default_model=settings.default_model,
        max_body_bytes=settings.server.max_body_bytes,
        check_webhook=jobs.webhooks.check if jobs is not None else None,
    )
    exchange.read_request = lambda: surface.parse(request, route, context)
    return exchange


async def images_handler(
    request: web.Request, surface: Surface | None = None, route: SurfaceRoute | None = None
) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    if surface is None or route is None:  # the OpenAI routes, as before surfaces existed
        surface = gateway.surfaces[0]
        route = SurfaceRoute("POST", request.path, "edit" if request.path.endswith("/edits") else "generate")
    exchange = new_exchange(request, surface, route)
    # The exchange runs in a task of its own: when the client hangs up, aiohttp may cancel this
    # handler (`handler_cancellation`), but the budget hold must still be settled and the audit
    # record written. Shutdown waits for such orphaned exchanges (`Gateway.finishing`).
    work = asyncio.ensure_future(_run_exchange(gateway, exchange, request, surface))
    gateway.finishing.add(work)
    work.add_done_callback(gateway.finishing.discard)
    return await asyncio.shield(work)


def client_gone(request: web.Request) -> bool:
    """Whether the client's connection is closed: nothing can be released to it any more."""
    transport = request.transport
    return transport is None or transport.is_closing()


async def _run_exchange(gateway: Gateway, exchange: Exchange, request: web.Request, surface: Surface) -> web.Response:
    if gateway.tracing is None:
        return await _run_untraced(gateway, exchange, request, surface)
    attributes = {
        "http.request.method": request.method,
        "http.route": exchange.route,
        "imagegate.request_id": exchange.request_id,
        "imagegate.audit_id": exchange.audit_id or "",
    }
    with gateway.tracing.server_span(f"imagegate {exchange.operation}", request.headers, attributes) as span:
        response = await _run_untraced(gateway, exchange, request, surface)
        if span.is_recording():
            span.set_attributes(exchange_span_attributes(exchange, response.status))
            if response.status >= 500:
                from opentelemetry.trace import Status, StatusCode

                span.set_status(Status(StatusCode.ERROR, exchange.error.code if exchange.error else None))
        return response


def exchange_span_attributes(exchange: Exchange, status: int) -> dict[str, Any]:
    """What a trace may say about an exchange: never the prompt, the end user or a key."""
    attributes: dict[str, Any] = {"http.response.status_code": status, "imagegate.outcome": exchange_outcome(exchange)}
    if exchange.caller is not None:
        attributes["imagegate.tenant"] = exchange.caller.tenant
    if exchange.provider:
        attributes["imagegate.provider"] = exchange.provider
    if exchange.request is not None:
        attributes["imagegate.model"] = exchange.request.model
        attributes["imagegate.images_requested"] = exchange.request.n
    if exchange.error is not None:
        attributes["imagegate.error.code"] = exchange.error.code
    return attributes


async def _run_untraced(gateway: Gateway, exchange: Exchange, request: web.Request, surface: Surface) -> web.Response:
    gateway.metrics.in_flight.inc()
    released: web.Response | None = None
    try:
        await gateway.pipeline.run(exchange)
        if exchange.error is None and client_gone(request):
            exchange.fail(ClientDisconnectedError("The client closed the connection before the answer was ready; nothing was released."))
        if isinstance(exchange.error, IdempotentReplay):
            # A retry with the same Idempotency-Key: the first response again, under its own audit record.
            replay, exchange.error = exchange.error, None
            response = replay.render()
            response.headers.update(exchange.response_headers)
        else:
            response = await _respond(gateway, exchange, request, surface)
        released = await _audit_then_release(gateway, exchange, response, surface.render_error)
        return released
    finally:
        # Stages' after-audit hooks (the limits stage keeps the released response for replays).
        for hook in exchange.notes.pop("after_audit", ()):
            await hook(released)
        gateway.metrics.in_flight.dec()


async def _respond(gateway: Gateway, exchange: Exchange, request: web.Request, surface: Surface) -> web.Response:
    if exchange.error is None and exchange.result is not None and exchange.request is not None:
        if not [image for image in exchange.result.images if not image.withheld]:
            exchange.fail(
                InvalidRequestError(
                    "No image could be returned: every generated image was withheld by the safety policy.",
                    code="content_policy_violation",
                )
            )
        elif exchange.request.response_format == "url":
            base = base_url(request, gateway.settings.server.public_base_url)
            ttl = gateway.settings.server.asset_url_ttl_s
            for index, image in enumerate(exchange.result.images):
                if not image.withheld:
                    name = await gateway.assets.put(image.data, image.media_type)
                    image.asset_url = base + gateway.assets.signed_path(name, ttl)
                    sidecar = await publish_sidecar(exchange, index, gateway.assets, name)
                    if sidecar is not None:
                        remember_sidecar_url(exchange, index, base + gateway.assets.signed_path(sidecar, ttl))
        elif sidecars(exchange) and surface.links_sidecars(request):
            # The body has no place for them: stored as assets of their own, named in `Link`.
            base = base_url(request, gateway.settings.server.public_base_url)
            ttl = gateway.settings.server.asset_url_ttl_s
            for index, found in sorted(sidecars(exchange).items()):
                image = exchange.result.images[index]
                if not image.withheld:
                    name = await gateway.assets.put_sidecar(new_name(image.media_type), found.data)
                    remember_sidecar_url(exchange, index, base + gateway.assets.signed_path(name, ttl))
    if exchange.error is not None:
        response = surface.render_error(exchange.error)
    else:
        response = surface.render_result(exchange, request)
        if exchange.request is not None and exchange.request.response_format != "url" and surface.links_sidecars(request):
            links = sidecar_links(exchange)
            if links:
                response.headers["Link"] = links
        result = exchange.result
        assert result is not None
        withheld = sum(image.withheld for image in result.images)
        blurred = sum(image.blurred and not image.withheld for image in result.images)
        if withheld:
            response.headers["X-Imagegate-Withheld"] = str(withheld)
        if blurred:
            response.headers["X-Imagegate-Blurred"] = str(blurred)
    response.headers.update(exchange.response_headers)
    return response


async def _audit_then_release(
    gateway: Gateway,
    exchange: Exchange,
    response: web.Response,
    render_error: Callable[[ImagegateError], web.Response] = openai_surface.render_error,
) -> web.Response:
    """Write the audit record durably, then release the response; fail closed if the write fails."""
    tenant = gateway.settings.tenants.get(exchange.caller.tenant) if exchange.caller else None
    exchange.status = response.status
    record = build_record(exchange, prompt_mode=tenant.audit_prompts if tenant else "hash", status=response.status)
    try:
        await retain_images(gateway, exchange, record)
        await gateway.audit.append(record)
    except (AuditWriteError, OSError) as exc:
        gateway.metrics.audit_failures.inc()
        log.error("audit_write_failed_request_refused", audit_id=exchange.audit_id, error=str(exc))
        response = render_error(
            AuditUnavailableError("The request could not be recorded in the audit log, so its result is withheld.")
        )
    metrics = gateway.metrics
    metrics.requests.labels(exchange.route, str(response.status)).inc()
    for decision in exchange.decisions:
        metrics.decisions.labels(decision.stage, decision.action.value, decision.category or "").inc()
    for key, seconds in exchange.timings.items():
        if key.startswith("upstream."):
            continue
        metrics.observe_stage(key, seconds)
    upstream_s = exchange.result.upstream_latency_s if exchange.result else 0.0
    metrics.added_latency.labels(exchange.route).observe(max(0.0, exchange.elapsed_s() - upstream_s))
    response.headers["X-Imagegate-Audit-Id"] = exchange.audit_id or ""
    response.headers["X-Imagegate-Outcome"] = exchange_outcome(exchange)
    response.headers["X-Imagegate-Policy-Version"] = exchange.policy_version
    log.info(
        "exchange",
        route=exchange.route,
        status=response.status,
        tenant=exchange.caller.tenant if exchange.caller else None,
        model=exchange.request.model if exchange.request else None,
        outcome=exchange_outcome(exchange),
        audit_id=exchange.audit_id,
        ms=round(exchange.elapsed_s() * 1000, 2),
        **({"prompt": exchange.request.prompt} if gateway.settings.server.log_prompts and exchange.request else {}),
    )
    return response


async def asset_handler(request: web.Request) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    name = request.match_info["name"]
    if not gateway.assets.check(name, request.query.get("expires", ""), request.query.get("signature", "")):
        raise PermissionDeniedError("This image URL is invalid or has expired.", code="invalid_signature")
    try:
        data = await gateway.assets.get(name)
    except AssetNotFound as exc:
        raise ImagegateError("This image no longer exists.", status=404, code="not_found") from exc
    # The bytes are an image (or a C2PA sidecar) whatever they look like: never sniffed into HTML,
    # never run as a page.
    headers = {
        "Cache-Control": "private, max-age=3600",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "default-src 'none'; sandbox",
    }
    if is_sidecar(name):
        headers["Content-Disposition"] = f'attachment; filename="{name}"'
    elif gateway.settings.provenance.get("mode", "embedded") != "embedded":
        # C2PA's discovery of an external manifest store over HTTP; signed for as long as this URL.
        sidecar = sidecar_of(name)
        if await gateway.assets.exists(sidecar):
            path = gateway.assets.signed_path_until(sidecar, int(request.query["expires"]))
            base = base_url(request, gateway.settings.server.public_base_url)
            headers["Link"] = f'<{base}{path}>; rel="c2pa-manifest"'
    return web.Response(body=data, content_type=media_type_of(name), headers=headers)


async def passthrough_handler(request: web.Request) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    exchange = base_exchange(request, "passthrough")
    try:
        exchange.caller = gateway.authenticate.identify(bearer_token(request))
        if gateway.passthrough is None:
            raise ImagegateError(
                f"Unknown path {request.path}: this gateway forwards no other API.", status=404, code="unknown_url"
            )
    except ImagegateError as error:
        exchange.fail(error)
        return await _audit_then_release(gateway, exchange, openai_surface.render_error(error))

    async def audit(status: int) -> None:
        exchange.status = status
        await gateway.audit.append(build_record(exchange, status=status))

    return await gateway.passthrough.forward(request, exchange, audit)


async def verify_handler(request: web.Request) -> web.StreamResponse:
    """`POST /v1/provenance/verify`: Content Credentials reports for uploaded or linked images."""
    gateway = request.app[GATEWAY]
    exchange = base_exchange(request, "verify")
    try:
        exchange.caller = gateway.authenticate.identify(bearer_token(request))
        sources = await provenance_api.read_sources(request, gateway.fetcher, gateway.settings.server.max_body_bytes)
        trust = None
        for stage in gateway.pipeline.stages:
            anchors = getattr(getattr(stage, "settings", None), "trust_anchors_file", None)
            if anchors is not None:
                trust = await asyncio.to_thread(Path(anchors).read_text)
        body = await provenance_api.verify_sources(sources, trust)
        exchange.notes["verified"] = body["summary"]
        response = web.json_response(body)
    except ImagegateError as error:
        exchange.fail(error)
        response = openai_surface.render_error(error)
    return await _audit_then_release(gateway, exchange, response)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    checks = {"audit": await gateway.audit.ping()}
    for stage in gateway.pipeline.stages:
        ready = getattr(stage, "ready", None)
        if ready is not None:
            checks[stage.name] = await ready()
    ok = all(checks.values())
    return web.json_response({"ready": ok, "checks": checks}, status=200 if ok else 503)


async def metrics_handler(request: web.Request) -> web.Response:
    body = request.app[GATEWAY].metrics.render()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})
