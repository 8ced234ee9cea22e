"""Asynchronous jobs: submit now, collect later, moderated, signed and audited exactly once.

Job-style surfaces (BFL, Replicate, fal) answer a submit with a job id and let the client poll. In
imagegate a job is one `Exchange` travelling through the ordinary pipeline in a task of its own:

1. The submit handler starts the task and waits until the exchange has passed every request stage
   and reached the upstream (the provider announces it through `adapters.base.UPSTREAM_STARTED`).
   A request stopped before that (bad key, limit, blocked prompt) gets its error at once, in the
   surface's shape, exactly as a synchronous call would; it has already been audited. With an
   `Idempotency-Key` (claimed by the limits stage), the answer is kept for retries: a retried
   submit gets the same job, audited as a replay; a submit that created no job frees its key.
2. Otherwise the client gets the job id. The provider collects the upstream result (its own polls,
   or a wait); the response stages classify and sign the images; they are stored in the asset store
   (C2PA sidecars beside them, in provenance sidecar/both mode);
   the audit record is written; only then is the processed outcome stored under the job id. This
   happens once per job, whatever the number of polls: polls only read the stored outcome.
3. Polls answer with fresh signed imagegate URLs for the stored images, never with a provider URL,
   and only to the tenant that submitted the job. A webhook the client registered receives the same
   processed outcome (`proxy.webhooks`), signed.

The job store is an interface (`JobStore`): process memory by default, or Redis (`jobs.backend:
redis`) so that any replica answers polls; with the S3 asset store (`assets.backend: s3`) any
replica also serves the images. Records are plain JSON data. The running task itself lives in the
replica that took the submit.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

import structlog
from aiohttp import web

from .adapters.base import UPSTREAM_STARTED
from .adapters.surface import JobSurface, SurfaceRoute, base_url
from .errors import ImagegateError, InvalidRequestError
from .exchange import Exchange
from .stages.limits import IdempotentReplay
from .stages.provenance import publish_sidecar
from .webhooks import WebhookSender, derive_tenant_secret

if TYPE_CHECKING:
    from .app import Gateway
    from .settings import JobSettings

log = structlog.get_logger("imagegate.jobs")

JobStatus = Literal["pending", "succeeded", "failed"]
#: Where a surface's `parse` leaves the webhook the client registered: {"url", "secret"?}.
WEBHOOK_KEY = "imagegate.webhook"
#: Where a surface's `parse` leaves the client's input as the provider echoes it back (Replicate).
INPUT_KEY = "imagegate.job_input"
#: The exchange note holding the audited replay of a retried submit (same `Idempotency-Key`).
REPLAY_KEY = "idempotent_replay"

NewExchange = Callable[[web.Request, JobSurface, SurfaceRoute], Exchange]
Audit = Callable[["Gateway", Exchange, web.Response, Callable[[ImagegateError], web.Response]], Awaitable[web.Response]]


@dataclass
class JobRecord:
    id: str
    surface: str
    created_at: float = field(default_factory=time.time)
    status: JobStatus = "pending"
    tenant: str | None = None
    model: str | None = None
    provider: str | None = None
    #: Base of the URLs handed out for this job (public_base_url, or the submit's host).
    base_url: str = ""
    #: The client's input as the surface wants to echo it back (Replicate's `input`).
    input: dict[str, Any] = field(default_factory=dict)
    #: Stored, processed images: [{"name", "media_type"}] in the asset store.
    assets: list[dict[str, str]] = field(default_factory=list)
    #: Provider metadata worth showing (seed, finish reason...).
    metadata: dict[str, Any] = field(default_factory=dict)
    #: {"status", "type", "code", "message"} when the job failed or was blocked.
    error: dict[str, Any] | None = None
    audit_id: str | None = None
    completed_at: float | None = None
    webhook: dict[str, str] | None = None
    #: Whether the exchange reached the upstream (a job stopped before it never existed for the client).
    reached_upstream: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobRecord:
        return cls(**data)


class JobStore(Protocol):
    """Where processed job outcomes live. `finish` must be atomic: the first final record wins."""

    async def create(self, job: JobRecord) -> None:
        """Store a pending job unless a record with its id exists already."""
        ...

    async def finish(self, job: JobRecord) -> bool:
        """Store the final record unless one is already final; False if it was."""
        ...

    async def get(self, job_id: str) -> JobRecord | None: ...

    async def close(self) -> None: ...


class MemoryJobStore:
    """Jobs in process memory, kept `ttl_s` seconds after creation (one replica only)."""

    def __init__(self, ttl_s: float = 24 * 3600) -> None:
        self.ttl_s = ttl_s
        self._jobs: dict[str, dict[str, Any]] = {}

    def _prune(self) -> None:
        horizon = time.time() - self.ttl_s
        for job_id in [key for key, job in self._jobs.items() if job["created_at"] < horizon]:
            del self._jobs[job_id]

    async def create(self, job: JobRecord) -> None:
        self._prune()
        self._jobs.setdefault(job.id, job.to_dict())

    async def finish(self, job: JobRecord) -> bool:
        current = self._jobs.get(job.id)
        if current is not None and current["status"] != "pending":
            return False
        self._jobs[job.id] = job.to_dict()
        return True

    async def get(self, job_id: str) -> JobRecord | None:
        data = self._jobs.get(job_id)
        return JobRecord.from_dict(data) if data is not None else None

    async def close(self) -> None:
        return None


#: `finish` in one atomic step: the first final record wins, whichever replica ran the job.
_FINISH_SCRIPT = """
local current = redis.call('GET', KEYS[1])
if current and cjson.decode(current)['status'] ~= 'pending' then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""


class RedisJobStore:
    """Jobs in Redis, shared by every replica: a poll or a webhook answered by any of them.

    One key per job (JSON), expiring `ttl_s` after submit; `create` is SET NX and `finish` a Lua
    script, so a record that is final can never be overwritten (exactly once, across replicas).
    """

    def __init__(self, url: str, *, key_prefix: str = "imagegate:jobs:", ttl_s: float = 86400.0, timeout_s: float = 2.0) -> None:
        import redis.asyncio as redis

        self.key_prefix = key_prefix
        self.ttl_ms = int(ttl_s * 1000)
        self._client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self._finish = self._client.register_script(_FINISH_SCRIPT)

    def _key(self, job_id: str) -> str:
        return self.key_prefix + job_id

    async def create(self, job: JobRecord) -> None:
        await self._client.set(self._key(job.id), json.dumps(job.to_dict()), px=self.ttl_ms, nx=True)

    async def finish(self, job: JobRecord) -> bool:
        return bool(await self._finish(keys=[self._key(job.id)], args=[json.dumps(job.to_dict()), self.ttl_ms]))

    async def get(self, job_id: str) -> JobRecord | None:
        data = await self._client.get(self._key(job_id))
        return JobRecord.from_dict(json.loads(data)) if data is not None else None

    async def close(self) -> None:
        await self._client.aclose()


def open_job_store(config: JobSettings) -> JobStore:
    """The store `jobs:` configures (process memory by default)."""
    if config.backend == "redis":
        from .settings import url_from

        url = url_from("jobs", config.redis_url, config.redis_url_env)
        return RedisJobStore(url, key_prefix=config.key_prefix, ttl_s=config.ttl_s)
    return MemoryJobStore(ttl_s=config.ttl_s)


def _note_webhook(exchange: Exchange, request: web.Request) -> None:
    """Once the surface has parsed the submit, note the webhook it registers: a retry with the same
    Idempotency-Key must register the same one (`proxy.stages.limits.fingerprint`)."""
    parse = exchange.read_request
    if parse is None:
        return

    async def read_request() -> Any:
        parsed = await parse()
        exchange.notes["job_webhook"] = request.get(WEBHOOK_KEY)
        return parsed

    exchange.read_request = read_request


def error_dict(error: ImagegateError) -> dict[str, Any]:
    return {"status": error.status, "type": error.type, "code": error.code, "message": error.message}


def error_from_dict(data: dict[str, Any]) -> ImagegateError:
    error = ImagegateError(str(data.get("message", "The job failed.")), code=data.get("code"), status=data.get("status"))
    error.type = str(data.get("type") or error.type)
    return error


class JobRunner:
    def __init__(self, store: JobStore, webhooks: WebhookSender, webhook_secret: str, *, submit_wait_s: float = 120.0) -> None:
        self.store = store
        self.webhooks = webhooks
        #: The master secret: never handed out; each tenant gets its own secret derived from it.
        self.webhook_secret = webhook_secret
        self.submit_wait_s = submit_wait_s
        self._tasks: set[asyncio.Task[None]] = set()

    def webhook_secret_for(self, tenant: str | None) -> str:
        """The secret that signs `tenant`'s webhooks (`whsec_...`), derived from the master secret:
        a tenant that reads its own secret cannot sign deliveries that another tenant would trust."""
        return derive_tenant_secret(self.webhook_secret, tenant or "")

    async def start(self) -> None:
        await self.webhooks.start()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.webhooks.close()
        await self.store.close()

    async def drain(self) -> None:
        """Wait for every running job (tests, graceful shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # -- submit ----------------------------------------------------------------------------------

    async def submit(
        self,
        request: web.Request,
        surface: JobSurface,
        route: SurfaceRoute,
        gateway: Gateway,
        *,
        new_exchange: NewExchange,
        audit: Audit,
    ) -> web.Response:
        exchange = new_exchange(request, surface, route)
        job = JobRecord(
            id=str(uuid.uuid4()),
            surface=surface.name,
            base_url=base_url(request, gateway.settings.server.public_base_url),
            audit_id=exchange.audit_id,
        )
        exchange.notes["job_id"] = job.id
        _note_webhook(exchange, request)
        response: web.Response | None = None
        try:
            response = await self._submit(request, surface, gateway, audit, exchange, job)
            return response
        finally:
            # An Idempotency-Key claimed by the limits stage: a retried submit gets this answer (the same
            # job) when a job was created; when none was, the key is freed and a retry starts afresh.
            finish = exchange.notes.pop("idempotency_finish", None)
            if finish is not None:
                await finish(response if job.reached_upstream else None)

    async def _submit(
        self, request: web.Request, surface: JobSurface, gateway: Gateway, audit: Audit, exchange: Exchange, job: JobRecord
    ) -> web.Response:
        started = asyncio.Event()

        def on_started() -> None:
            if job.reached_upstream:
                return
            job.reached_upstream = True
            job.tenant = exchange.caller.tenant if exchange.caller else None
            if exchange.request is not None:
                job.model = exchange.request.model
                job.input = dict(request.get(INPUT_KEY) or {})
            job.provider = exchange.provider
            job.webhook = request.get(WEBHOOK_KEY)
            started.set()

        task = asyncio.create_task(self._run(job, exchange, surface, gateway, audit, on_started))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        waiter = asyncio.ensure_future(started.wait())
        try:
            await asyncio.wait({task, waiter}, timeout=self.submit_wait_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if not job.reached_upstream:
            if task.done():
                if REPLAY_KEY in exchange.notes:  # a retry with an Idempotency-Key: the first submit's answer
                    return exchange.notes[REPLAY_KEY]
                # Stopped before the upstream (key, limits, prompt...): answered now, already audited.
                final = await self.store.get(job.id)
                error = exchange.error or error_from_dict((final.error if final else None) or {"status": 500})
                response = surface.render_error(error)
                response.headers.update(exchange.response_headers)
                response.headers["X-Imagegate-Audit-Id"] = exchange.audit_id or ""
                return response
            raise ImagegateError("The request could not be screened in time; retry later.", status=503, code="timeout")
        await self.store.create(job)
        wait_s = float(getattr(surface, "wait_seconds", lambda _request: 0.0)(request))
        if wait_s > 0:
            try:
                await asyncio.wait_for(asyncio.shield(task), wait_s)
            except asyncio.TimeoutError:
                pass
            current = await self.store.get(job.id) or job
            response = surface.render_job(current, request, self.urls(current, gateway))
        else:
            response = surface.render_submitted(job, request)
        response.headers["X-Imagegate-Audit-Id"] = exchange.audit_id or ""
        return response

    async def _run(
        self,
        job: JobRecord,
        exchange: Exchange,
        surface: JobSurface,
        gateway: Gateway,
        audit: Audit,
        on_started: Callable[[], None],
    ) -> None:
        UPSTREAM_STARTED.set(on_started)
        released: web.Response | None = None
        gateway.metrics.in_flight.inc()
        try:
            await gateway.pipeline.run(exchange)
            released = await self._process(job, exchange, surface, gateway, audit)
        except asyncio.CancelledError:
            job.status, job.error = "failed", {"status": 503, "type": "server_error", "code": "shutdown", "message": "imagegate stopped before the job finished."}
            await self.store.finish(job)
            raise
        except Exception as exc:  # never leave a job pending forever
            log.exception("job_failed", job_id=job.id)
            job.status = "failed"
            job.error = {"status": 500, "type": "server_error", "code": "job_failed", "message": f"The job failed: {type(exc).__name__}."}
        finally:
            for hook in exchange.notes.pop("after_audit", ()):
                try:
                    await hook(released)
                except Exception:
                    log.exception("after_audit_hook_failed", job_id=job.id)
            gateway.metrics.in_flight.dec()
        if REPLAY_KEY in exchange.notes:  # a replayed submit: the first submit's job is the only one
            return
        job.completed_at = time.time()
        if not await self.store.finish(job):
            log.error("job_finished_twice", job_id=job.id)
            return
        log.info("job_finished", job_id=job.id, status=job.status, audit_id=job.audit_id)
        if job.webhook and job.reached_upstream:
            payload = surface.webhook_body(job, self.urls(job, gateway))
            secret = job.webhook.get("secret") or self.webhook_secret_for(job.tenant)
            await self.webhooks.deliver(job.webhook["url"], payload, secret)

    async def _process(
        self, job: JobRecord, exchange: Exchange, surface: JobSurface, gateway: Gateway, audit: Audit
    ) -> web.Response:
        """Store the processed images, write the audit record, then record the outcome on the job."""
        if isinstance(exchange.error, IdempotentReplay):
            # A retried submit: the first submit's answer (its job), under an audit record of its own;
            # this job id is never handed out, nor stored.
            replay, exchange.error = exchange.error, None
            response = replay.render()
            response.headers.update(exchange.response_headers)
            response = exchange.notes[REPLAY_KEY] = await audit(gateway, exchange, response, surface.render_error)
            return response
        result = exchange.result
        released = [image for image in result.images if not image.withheld] if result is not None else []
        if exchange.error is None and result is not None and not released:
            exchange.fail(
                InvalidRequestError(
                    "No image could be returned: every generated image was withheld by the safety policy.",
                    code="content_policy_violation",
                )
            )
        assets: list[dict[str, str]] = []
        if exchange.error is None and result is not None:
            for index, image in enumerate(result.images):
                if image.withheld:
                    continue
                name = await gateway.assets.put(image.data, image.media_type)
                # Served beside the image; its URL is the image's `Link: rel="c2pa-manifest"`.
                await publish_sidecar(exchange, index, gateway.assets, name)
                assets.append({"name": name, "media_type": image.media_type})
            response = web.Response(status=200)
        else:
            assert exchange.error is not None
            response = surface.render_error(exchange.error)
        response = await audit(gateway, exchange, response, surface.render_error)
        if exchange.error is not None:
            job.status, job.error = "failed", error_dict(exchange.error)
        elif response.status >= 400:  # the audit record could not be written: nothing is released
            job.status = "failed"
            job.error = {"status": response.status, "type": "server_error", "code": "audit_unavailable",
                         "message": "The request could not be recorded in the audit log, so its result is withheld."}
        else:
            job.status, job.assets = "succeeded", assets
            job.metadata = {key: value for key, value in (result.metadata if result else {}).items() if key in ("seed", "finish_reason", "size")}
        return response

    # -- poll ------------------------------------------------------------------------------------

    async def poll(self, request: web.Request, surface: JobSurface, gateway: Gateway) -> web.Response:
        caller = gateway.authenticate.identify(surface.credential(request))
        job = await self.store.get(surface.job_id(request))
        if job is None or job.tenant != caller.tenant:
            raise ImagegateError("No job with this id exists for this API key.", status=404, code="not_found")
        return surface.render_job(job, request, self.urls(job, gateway))

    def urls(self, job: JobRecord, gateway: Gateway) -> list[str]:
        ttl = gateway.settings.server.asset_url_ttl_s
        return [job.base_url + gateway.assets.signed_path(asset["name"], ttl) for asset in job.assets]
