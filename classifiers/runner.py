"""`BatchingRunner`: gathers concurrent requests' images into batches and runs them off the event loop.

`classify(image)` puts the image on a queue and awaits its verdict. One collector task takes the
first waiting image, then keeps taking until the batch is full (`max_batch`) or `max_wait_ms` have
passed since that first image, and hands the batch to a single worker thread (torch parallelises
inside it, with the configured thread count). Images that queued while a batch ran form the next
batch at once. One undecodable image fails only its own caller.

A classifier that can work in two phases (`prepare_outcome`: decode and preprocess one image;
`classify_prepared`: embed and score a batch, as `ImageClassifier` does) gets a pipeline: each
image is decoded on a decoding thread (`decode_threads`, default 1) as soon as it arrives, while
the worker is still running the batch before, so the worker only embeds. At most `2 * max_batch` images are prepared ahead of the
collector (their tensors wait in memory); the rest are prepared when the collector takes them.

Must never: run decoding or inference on the event loop, start more than one inference at a time
(they would fight over the same cores), decode on more than `decode_threads` threads, or leave
a caller waiting forever after `close()`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from classifiers.errors import ClassifierClosedError, ImageDecodeError
from classifiers.verdict import ImageVerdict


class BatchClassifier(Protocol):
    def classify_outcomes(self, images: Sequence[bytes]) -> list[ImageVerdict | ImageDecodeError]: ...


class TwoPhaseClassifier(BatchClassifier, Protocol):
    """A classifier the runner can pipeline: decode ahead on one thread, embed batches on another."""

    def prepare_outcome(self, image: bytes) -> Any: ...

    def classify_prepared(self, prepared: Sequence[Any]) -> list[ImageVerdict | ImageDecodeError]: ...


def two_phase(classifier: BatchClassifier) -> bool:
    return callable(getattr(classifier, "prepare_outcome", None)) and callable(
        getattr(classifier, "classify_prepared", None)
    )


@dataclass(slots=True)
class _Pending:
    image: bytes
    future: asyncio.Future[ImageVerdict]
    prepared: Future[Any] | None = None


class BatchingRunner:
    """Micro-batching front of an `ImageClassifier` for asyncio callers."""

    def __init__(
        self, classifier: BatchClassifier, max_batch: int = 16, max_wait_ms: float = 10.0, decode_threads: int = 1
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if decode_threads < 1:
            raise ValueError("decode_threads must be at least 1")
        if max_wait_ms < 0:
            raise ValueError("max_wait_ms must not be negative")
        self.classifier = classifier
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.decode_threads = decode_threads
        self._queue: asyncio.Queue[_Pending] | None = None
        self._collector: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._preparer: ThreadPoolExecutor | None = None
        self._prepared_ahead = 0  # images prepared (or being prepared) that the collector has not taken
        self.batches_run = 0
        self.images_run = 0
        self.busy_seconds = 0.0  # time spent in the worker thread
        self.in_batch = 0  # images of the batch being run now

    @property
    def queue_depth(self) -> int:
        """Images waiting for a batch (not counting the batch being run)."""
        return self._queue.qsize() if self._queue is not None else 0

    @property
    def running(self) -> bool:
        return self._collector is not None and not self._collector.done()

    async def start(self) -> None:
        if self.running:
            return
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="imagegate-classifier")
        if two_phase(self.classifier):
            self._preparer = ThreadPoolExecutor(
                max_workers=self.decode_threads, thread_name_prefix="imagegate-classifier-decode"
            )
        self._collector = asyncio.create_task(self._collect(), name="imagegate-classifier-batcher")

    async def classify(self, image: bytes) -> ImageVerdict:
        """The verdict for one image; raises `ImageDecodeError` for undecodable data."""
        if not self.running or self._queue is None:
            raise ClassifierClosedError("the classifier runner is not running")
        future: asyncio.Future[ImageVerdict] = asyncio.get_running_loop().create_future()
        pending = _Pending(image, future)
        if self._preparer is not None and self._prepared_ahead < 2 * self.max_batch:
            self._prepare(pending)
            self._prepared_ahead += 1
        self._queue.put_nowait(pending)
        return await future

    def _prepare(self, pending: _Pending) -> None:
        assert self._preparer is not None
        classifier: TwoPhaseClassifier = self.classifier  # type: ignore[assignment]
        pending.prepared = self._preparer.submit(classifier.prepare_outcome, pending.image)

    async def close(self) -> None:
        """Stop taking work, fail waiting callers with `ClassifierClosedError`, stop the worker."""
        collector, self._collector = self._collector, None
        if collector is not None:
            collector.cancel()
            try:
                await collector
            except asyncio.CancelledError:
                pass
        closed = ClassifierClosedError("the classifier runner was closed")
        if self._queue is not None:
            while not self._queue.empty():
                pending = self._queue.get_nowait()
                if not pending.future.done():
                    pending.future.set_exception(closed)
        for executor in (self._preparer, self._executor):  # a worker may wait on a preparation
            if executor is not None:
                await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)
        self._preparer = self._executor = None

    async def _next_batch(self, queue: asyncio.Queue[_Pending]) -> list[_Pending]:
        batch = [self._take(await queue.get())]
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch:
            try:
                batch.append(self._take(queue.get_nowait()))
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(self._take(await asyncio.wait_for(queue.get(), remaining)))
            except TimeoutError:
                break
        kept = []
        for pending in batch:
            if not pending.future.done():
                kept.append(pending)
            elif pending.prepared is not None:  # a cancelled caller: no need to decode its image
                pending.prepared.cancel()
        return kept

    def _take(self, pending: _Pending) -> _Pending:
        """The collector takes `pending` off the queue: it is prepared now if it was not ahead."""
        if self._preparer is not None:
            if pending.prepared is None:
                self._prepare(pending)
            else:
                self._prepared_ahead -= 1
        return pending

    def _run_batch(self, batch: list[_Pending]) -> list[ImageVerdict | ImageDecodeError]:
        """In the worker thread: wait for the batch's images to be prepared, then classify them."""
        if self._preparer is None:
            return self.classifier.classify_outcomes([pending.image for pending in batch])
        classifier: TwoPhaseClassifier = self.classifier  # type: ignore[assignment]
        return classifier.classify_prepared([pending.prepared.result() for pending in batch])  # type: ignore[union-attr]

    async def _collect(self) -> None:
        assert self._queue is not None and self._executor is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch(self._queue)
            if not batch:
                continue
            started = time.perf_counter()
            self.in_batch = len(batch)
            try:
                outcomes = await loop.run_in_executor(self._executor, self._run_batch, batch)
            except asyncio.CancelledError:  # close(): the callers of this batch must not hang
                closed = ClassifierClosedError("the classifier runner was closed")
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(closed)
                raise
            except Exception as error:  # the whole batch failed (model error): every caller hears it
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(error)
                continue
            finally:
                self.busy_seconds += time.perf_counter() - started
                self.in_batch = 0
            self.batches_run += 1
            self.images_run += len(batch)
            for pending, outcome in zip(batch, outcomes, strict=True):
                if pending.future.done():
                    continue
                if isinstance(outcome, BaseException):
                    pending.future.set_exception(outcome)
                else:
                    pending.future.set_result(outcome)
