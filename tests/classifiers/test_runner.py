from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest

from classifiers.errors import ClassifierClosedError, ImageDecodeError
from classifiers.runner import BatchingRunner
from classifiers.verdict import ImageVerdict

from .conftest import colour_image, encode


class CountingClassifier:
    """Wraps the real classifier, recording each batch's size and the thread it ran on."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.batch_sizes: list[int] = []
        self.threads: set[int] = set()

    def classify_outcomes(self, images: Sequence[bytes]) -> list[ImageVerdict | ImageDecodeError]:
        self.batch_sizes.append(len(images))
        self.threads.add(threading.get_ident())
        return self.inner.classify_outcomes(images)


async def classify_all(runner: BatchingRunner, images: Sequence[bytes]) -> list[ImageVerdict]:
    """Start `runner`, classify `images` concurrently, close it whatever happened."""
    await runner.start()
    try:
        return await asyncio.gather(*(runner.classify(image) for image in images))
    finally:
        await runner.close()


def assert_same_verdict(a: ImageVerdict, b: ImageVerdict) -> None:
    assert a.action == b.action and a.category == b.category and a.fired == b.fired
    assert a.scores.keys() == b.scores.keys()
    for name in a.scores:
        assert a.scores[name] == pytest.approx(b.scores[name], abs=2e-3)
        assert a.thresholds[name] == b.thresholds[name]


async def test_concurrent_calls_share_batches_and_match_one_at_a_time(tiny_classifier) -> None:
    images = [encode(colour_image(label, seed)) for seed in range(4) for label in ("violence", "drugs", "safe")]
    expected = [tiny_classifier.classify_batch([image])[0] for image in images]
    counting = CountingClassifier(tiny_classifier)
    runner = BatchingRunner(counting, max_batch=8, max_wait_ms=50)
    results = await classify_all(runner, images)
    assert sum(counting.batch_sizes) == len(images)
    assert len(counting.batch_sizes) < len(images)
    assert max(counting.batch_sizes) <= 8
    assert runner.batches_run == len(counting.batch_sizes) and runner.images_run == len(images)
    assert threading.get_ident() not in counting.threads  # inference ran off the event loop thread
    for got, want in zip(results, expected, strict=True):
        assert_same_verdict(got, want)


async def test_undecodable_image_fails_only_its_caller(tiny_classifier) -> None:
    runner = BatchingRunner(tiny_classifier, max_batch=4, max_wait_ms=50)
    await runner.start()
    try:
        good, bad = await asyncio.gather(
            runner.classify(encode(colour_image("safe", 1))), runner.classify(b"garbage"), return_exceptions=True
        )
    finally:
        await runner.close()
    assert isinstance(good, ImageVerdict)
    assert isinstance(bad, ImageDecodeError)


async def test_model_failure_reaches_every_caller_of_the_batch() -> None:
    class Broken:
        def classify_outcomes(self, images: Sequence[bytes]) -> list[ImageVerdict | ImageDecodeError]:
            raise RuntimeError("model exploded")

    runner = BatchingRunner(Broken(), max_batch=4, max_wait_ms=20)
    await runner.start()
    try:
        results = await asyncio.gather(*(runner.classify(b"x") for _ in range(3)), return_exceptions=True)
    finally:
        await runner.close()
    assert all(isinstance(result, RuntimeError) for result in results)


async def test_not_started_and_closed_runner_refuse_and_release_waiters() -> None:
    release = threading.Event()

    class Slow:
        def classify_outcomes(self, images: Sequence[bytes]) -> list[ImageVerdict | ImageDecodeError]:
            release.wait(5)
            raise RuntimeError("too late")

    runner = BatchingRunner(Slow(), max_batch=1, max_wait_ms=0)
    with pytest.raises(ClassifierClosedError):
        await runner.classify(b"x")
    await runner.start()
    first = asyncio.create_task(runner.classify(b"a"))
    second = asyncio.create_task(runner.classify(b"b"))
    while runner.queue_depth != 1:  # first is running, second waits in the queue
        await asyncio.sleep(0.005)
    closing = asyncio.create_task(runner.close())
    await asyncio.sleep(0.01)
    release.set()
    await closing
    for task in (first, second):
        with pytest.raises(ClassifierClosedError):
            await task
    with pytest.raises(ClassifierClosedError):
        await runner.classify(b"x")


class PipelineProbe:
    """A two-phase classifier whose first batch waits until a later image has been prepared."""

    def __init__(self, max_ahead_wait: float = 5.0) -> None:
        self.prepared: list[tuple[bytes, int]] = []  # (image, thread)
        self.batches: list[list[bytes]] = []
        self.worker_threads: set[int] = set()
        self.later_prepared = threading.Event()
        self.release = threading.Event()
        self.prepared_during_first_batch: bool | None = None
        self.max_ahead_wait = max_ahead_wait

    def prepare_outcome(self, image: bytes) -> bytes | ImageDecodeError:
        self.prepared.append((image, threading.get_ident()))
        if image != b"first":
            self.later_prepared.set()
        return ImageDecodeError("not an image") if image == b"bad" else image.upper()

    def classify_prepared(self, prepared: Sequence[bytes | ImageDecodeError]) -> list[ImageVerdict | ImageDecodeError]:
        self.worker_threads.add(threading.get_ident())
        if not self.batches:
            self.prepared_during_first_batch = self.later_prepared.wait(self.max_ahead_wait)
            self.release.wait(self.max_ahead_wait)
        self.batches.append([item if isinstance(item, bytes) else b"<error>" for item in prepared])
        return [item if isinstance(item, ImageDecodeError) else _verdict_for(item) for item in prepared]

    def classify_outcomes(self, images: Sequence[bytes]) -> list[ImageVerdict | ImageDecodeError]:
        return self.classify_prepared([self.prepare_outcome(image) for image in images])


def _verdict_for(prepared: bytes) -> ImageVerdict:
    return ImageVerdict(
        action="allow", category=None, scores={"sexual": 0.0}, thresholds={"sexual": 0.5},
        method="concepts", model=prepared.decode(), checkpoint_sha256=None, calibrated=False, special_care=False,
        uncalibrated_reasons=("test probe",),
    )


async def wait_for(condition, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.002)


async def test_two_phase_classifier_decodes_next_images_while_a_batch_runs() -> None:
    probe = PipelineProbe()
    runner = BatchingRunner(probe, max_batch=1, max_wait_ms=0)
    await runner.start()
    try:
        first = asyncio.create_task(runner.classify(b"first"))
        await wait_for(lambda: runner.in_batch == 1)  # the worker holds the first batch
        later = [asyncio.create_task(runner.classify(image)) for image in (b"second", b"bad")]
        await wait_for(lambda: probe.prepared_during_first_batch is not None)
        probe.release.set()
        verdict = await first
        second, bad = await asyncio.gather(*later, return_exceptions=True)
    finally:
        probe.release.set()
        await runner.close()
    assert probe.prepared_during_first_batch is True  # decoded while the worker was busy: a pipeline
    assert verdict.model == "FIRST" and isinstance(second, ImageVerdict) and second.model == "SECOND"
    assert isinstance(bad, ImageDecodeError)  # an undecodable image fails only its own caller
    assert probe.batches == [[b"FIRST"], [b"SECOND"], [b"<error>"]]
    prepare_threads = {thread for _, thread in probe.prepared}
    assert len(prepare_threads) == 1  # one decoding thread ...
    assert prepare_threads.isdisjoint(probe.worker_threads)  # ... beside the worker ...
    assert threading.get_ident() not in prepare_threads | probe.worker_threads  # ... neither on the loop


async def test_two_phase_runner_prepares_at_most_two_batches_ahead() -> None:
    probe = PipelineProbe()
    probe.later_prepared.set()  # the first batch only waits for `release`
    runner = BatchingRunner(probe, max_batch=2, max_wait_ms=0)
    await runner.start()
    try:
        first = asyncio.create_task(runner.classify(b"first"))
        await wait_for(lambda: runner.in_batch == 1)
        later = [asyncio.create_task(runner.classify(f"img{i}".encode())) for i in range(12)]
        await wait_for(lambda: len(probe.prepared) == 1 + 4)  # the first, then 2 * max_batch ahead
        await asyncio.sleep(0.05)
        ahead = len(probe.prepared) - 1
        probe.release.set()
        results = await asyncio.gather(first, *later)
    finally:
        probe.release.set()
        await runner.close()
    assert ahead == 4  # no more, however long the queue: the rest are prepared when taken
    assert [verdict.model for verdict in results] == ["FIRST", *(f"IMG{i}" for i in range(12))]
    assert sorted(image for image, _ in probe.prepared) == sorted([b"first", *(f"img{i}".encode() for i in range(12))])
    assert sum(len(batch) for batch in probe.batches) == 13 and max(len(batch) for batch in probe.batches) <= 2


async def test_two_phase_runner_matches_classify_batch_and_closes_while_preparing(tiny_classifier) -> None:
    images = [encode(colour_image(label, seed)) for seed in range(3) for label in ("violence", "drugs", "safe")]
    expected = [tiny_classifier.classify_batch([image])[0] for image in images]
    runner = BatchingRunner(tiny_classifier, max_batch=4, max_wait_ms=20)
    results = await classify_all(runner, images)
    assert runner.batches_run < len(images) and runner.images_run == len(images)
    for got, want in zip(results, expected, strict=True):
        assert_same_verdict(got, want)

    probe = PipelineProbe()  # the first batch waits for `release`, set only once close() has begun
    runner = BatchingRunner(probe, max_batch=1, max_wait_ms=0)
    await runner.start()
    waiting = [asyncio.create_task(runner.classify(image)) for image in (b"first", b"second", b"third")]
    await wait_for(lambda: runner.in_batch == 1)
    closing = asyncio.create_task(runner.close())
    await asyncio.sleep(0)  # close() has cancelled the collector: the batch's result can no longer land
    probe.release.set()
    await asyncio.wait_for(closing, 5)
    for task in waiting:
        with pytest.raises(ClassifierClosedError):
            await task


async def test_decode_threads_prepare_images_in_parallel() -> None:
    barrier = threading.Barrier(3, timeout=5)

    class Parallel(PipelineProbe):
        def prepare_outcome(self, image: bytes) -> bytes | ImageDecodeError:
            barrier.wait()  # BrokenBarrierError unless three images are being prepared at once
            return super().prepare_outcome(image)

    probe = Parallel()
    probe.later_prepared.set()
    probe.release.set()
    with pytest.raises(ValueError, match="decode_threads"):
        BatchingRunner(probe, decode_threads=0)
    results = await classify_all(BatchingRunner(probe, max_batch=4, max_wait_ms=50, decode_threads=3), [b"a", b"b", b"c"])
    assert [verdict.model for verdict in results] == ["A", "B", "C"]
    assert len({thread for _, thread in probe.prepared}) == 3
