"""The image stages: classify input images of edits before the upstream, and every returned image.

Both stages share one `ClassifierService`: the open_clip model is loaded once per process, in a
worker thread, and concurrent requests' images are batched by `classifiers.BatchingRunner` off the
event loop. Actions per category come from the policy: block (withheld), blur (a blurred copy is
returned, marked `X-Imagegate-Blurred`), flag (returned, and held for review), allow. Every verdict
carries the model, checkpoint hash, scores and thresholds, and says `uncalibrated` when the model's
thresholds were never calibrated; the stages never invent a verdict. When the weights cannot be
loaded, a `required` classifier stops start-up with the loader's error; an optional one (the
embedded default) records `skipped` with that reason on every request, and says so in /readyz.

With `classifier.remote` the model lives in a separate classifier service (`imagegate classifier
serve`, see `proxy.classifier_service`) that batches images from every proxy; a failed or slow call
is a failure of the stage, which the failure policy decides (closed by default: 503, no image
released unclassified). Queue depth and batch counters are exported at /metrics either way.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from prometheus_client import Counter, Gauge

from classifiers import BatchingRunner, ClassifierError, ClassifierSettings, ImageDecodeError, blur_image, load_classifier
from policies.decisions import Action, Decision

from ..classifier_service import RemoteClassifier, RemoteClassifierSettings
from ..errors import ContentPolicyError, InvalidRequestError, UpstreamBadResponseError
from ..exchange import Exchange
from ..pipeline import BaseStage
from ..settings import ConfigError

log = structlog.get_logger("imagegate.classifier")


class ClassifierService:
    """One model and one batching runner for the process, started and closed once; or, with
    `classifier.remote`, the client of a separate classifier service (`imagegate classifier serve`)."""

    def __init__(
        self, settings: ClassifierSettings | None, *, required: bool, remote: RemoteClassifier | None = None
    ) -> None:
        self.settings = settings
        self.required = required
        self.remote = remote
        self.runner: BatchingRunner | None = None
        self.unavailable: str | None = None
        self._users = 0
        self._lock = asyncio.Lock()
        self._metrics_bound = False

    @property
    def available(self) -> bool:
        return self.runner is not None or self.remote is not None

    async def start(self) -> None:
        async with self._lock:
            self._users += 1
            if self._users > 1:
                return
            if self.remote is not None:
                await self.remote.start()
                return
            assert self.settings is not None
            try:
                classifier = await asyncio.to_thread(load_classifier, self.settings)
            except ClassifierError as exc:
                if self.required:
                    raise ConfigError(f"the image classifier could not be loaded: {exc}") from exc
                self.unavailable = f"the image classifier is not loaded: {exc}"
                log.warning("classifier_unavailable", detail=str(exc))
                return
            self.runner = BatchingRunner(
                classifier, max_batch=self.settings.batch_size, max_wait_ms=self.settings.max_batch_wait_ms,
                decode_threads=self.settings.decode_threads,
            )
            await self.runner.start()

    async def close(self) -> None:
        async with self._lock:
            self._users -= 1
            if self._users > 0:
                return
            if self.remote is not None:
                await self.remote.close()
            if self.runner is not None:
                await self.runner.close()
                self.runner = None

    async def ready(self) -> bool:
        if self.remote is not None:
            return await self.remote.ready()
        return self.runner is not None or not self.required

    def bind_metrics(self, metrics: Any) -> None:
        """Queue depth and batch counters of the in-process runner; outcomes of remote calls."""
        if self._metrics_bound:
            return  # both image stages share this service: register once
        self._metrics_bound = True
        metrics.classifier_runner = lambda: self.runner
        if self.remote is not None:
            self.remote.outcomes = Counter(
                "imagegate_classifier_remote_requests_total",
                "Calls to the classifier service by outcome (ok, timeout, unreachable, malformed, http_error).",
                ["outcome"], registry=metrics.registry,
            )
            Gauge(
                "imagegate_classifier_remote_in_flight", "Calls to the classifier service awaiting verdicts.",
                registry=metrics.registry,
            ).set_function(lambda: self.remote.in_flight if self.remote is not None else 0)

    async def classify(self, images: list[bytes], request_id: str | None = None) -> list[Any]:
        """One verdict (or the exception for that image) per image."""
        if self.remote is not None:
            return await self.remote.classify(images, request_id)
        assert self.runner is not None
        return list(await asyncio.gather(*(self.runner.classify(image) for image in images), return_exceptions=True))


def _decision(stage: str, verdict: Any, index: int) -> Decision:
    scores = verdict.scores or {}
    category = verdict.category
    return Decision(
        stage=stage,
        action=verdict.action,
        category=category,
        score=round(scores[category], 4) if category in scores else None,
        reason=verdict.summary(),
        image_index=index,
        details={"calibrated": verdict.calibrated, "model": verdict.model, "method": verdict.method},
    )


class ImageStageBase(BaseStage):
    safety = True

    def __init__(self, service: ClassifierService) -> None:
        self.service = service

    async def start(self) -> None:
        await self.service.start()

    async def close(self) -> None:
        await self.service.close()

    async def ready(self) -> bool:
        return await self.service.ready()

    def bind_metrics(self, metrics: Any) -> None:
        self.service.bind_metrics(metrics)


class OutputClassifierStage(ImageStageBase):
    name = "output_classifier"

    async def on_response(self, exchange: Exchange) -> None:
        if exchange.stopped or exchange.result is None:
            return
        if not self.service.available:
            exchange.skip(self.name, self.service.unavailable or "the image classifier is not loaded")
            return
        images = exchange.result.images
        verdicts = await self.service.classify([image.data for image in images], exchange.request_id)
        for index, (image, verdict) in enumerate(zip(images, verdicts, strict=True)):
            if isinstance(verdict, ImageDecodeError):
                raise UpstreamBadResponseError(f"Upstream image {index} could not be decoded: {verdict}")
            if isinstance(verdict, BaseException):
                raise verdict  # the stage failed: the failure policy decides
            image.verdict = verdict.to_dict()
            exchange.decide(_decision(self.name, verdict, index))
            if verdict.action is Action.BLOCK:
                image.withheld = True
            elif verdict.action is Action.BLUR:
                image.data = await asyncio.to_thread(blur_image, image.data, image.media_type)
                image.blurred = True


class InputImageStage(ImageStageBase):
    name = "input_images"

    async def on_request(self, exchange: Exchange) -> None:
        assert exchange.request is not None
        images = exchange.request.images
        if not images:
            return
        if not self.service.available:
            exchange.skip(self.name, self.service.unavailable or "the image classifier is not loaded")
            return
        verdicts = await self.service.classify([image.data for image in images], exchange.request_id)
        for index, verdict in enumerate(verdicts):
            if isinstance(verdict, ImageDecodeError):
                raise InvalidRequestError(f"Input image {index} is not usable: {verdict}", param="image", code="invalid_image")
            if isinstance(verdict, BaseException):
                raise verdict
            decision = exchange.decide(_decision(self.name, verdict, index))
            # An input that would be blurred or blocked as output is not sent upstream at all.
            if decision.action in (Action.BLOCK, Action.BLUR):
                raise ContentPolicyError(
                    "Your request was rejected by the safety system: an input image was classified as "
                    f"{(verdict.category or 'unsafe').replace('_', ' ')} content.",
                    param="image",
                )


#: Keys a proxy's `classifier:` section may hold next to `remote`: the model, thresholds and actions
#: are the classifier service's own config, and silently ignoring them here would mislead.
REMOTE_SECTION_KEYS = {"remote", "required", "enabled", "failure_mode"}


def classifier_service(section: dict[str, Any]) -> ClassifierService:
    data = dict(section)
    required = bool(data.pop("required", True))
    remote_section = data.pop("remote", None)
    if remote_section is not None and data.get("enabled", True):
        extra = sorted(set(data) - REMOTE_SECTION_KEYS)
        if extra:
            raise ConfigError(
                f"classifier.remote is set, so {', '.join(extra)} belong in the classifier service's own config "
                "(`imagegate classifier serve --config ...`), not the proxy's"
            )
        try:
            remote = RemoteClassifier(RemoteClassifierSettings.model_validate(remote_section))
        except ValueError as exc:
            raise ConfigError(f"invalid classifier.remote settings: {exc}") from exc
        return ClassifierService(None, required=required, remote=remote)
    try:
        settings = ClassifierSettings.model_validate(data)
    except ValueError as exc:
        raise ConfigError(f"invalid classifier settings: {exc}") from exc
    return ClassifierService(settings, required=required)
