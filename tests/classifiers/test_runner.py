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
    await runner.start()
    try:
        results = await asyncio.gather(*(runner.classify(image) for image in images))
    finally:
        await runner.close()
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
