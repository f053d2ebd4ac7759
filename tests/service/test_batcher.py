"""Batcher: real batching over a real ModelRuntime, and timing-controlled behaviour over a
plain Python model (a function that sleeps or waits on a gate: a real component for a
batcher, whose job is timing and fan-out)."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
import tracemalloc
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from sklearn.datasets import load_digits

from service import bundle, errors, types
from service.batcher import Batcher
from service.metrics import Metrics
from service.runtime import ModelRuntime

T = TypeVar("T")
LABELS = {"model": "m", "version": "1"}


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def ids_images(ids: list[int], side: int = 2) -> np.ndarray:
    """One image per id, every pixel equal to the id, so a model's rows can be traced."""
    return np.stack([np.full((side, side, 1), i, np.float32) for i in ids])


class PlainModel:
    """A model in plain Python: cluster_id of a row = its image's first pixel.

    Records what each call received and on which thread; optionally sleeps, waits on a
    gate, or raises.
    """

    def __init__(self, seconds: float = 0.0, gate: threading.Event | None = None) -> None:
        self.seconds = seconds
        self.gate = gate
        self.fail: BaseException | None = None
        self.calls: list[tuple[list[int], bool]] = []
        self.threads: set[int] = set()
        self._lock = threading.Lock()

    def __call__(self, images: np.ndarray, with_reconstruction: bool) -> types.BatchOutput:
        ids = images[:, 0, 0, 0].astype(np.int64)
        with self._lock:
            self.calls.append((ids.tolist(), with_reconstruction))
            self.threads.add(threading.get_ident())
        if self.gate is not None:
            assert self.gate.wait(timeout=20), "test gate never opened"
        if self.seconds:
            time.sleep(self.seconds)
        if self.fail is not None:
            raise self.fail
        n = len(images)
        return types.BatchOutput(
            cluster_id=ids, distance=ids.astype(np.float32),
            distances=np.zeros((n, 3), np.float32), embedding=images.reshape(n, -1),
            reconstruction=images.copy() if with_reconstruction else None,
        )

    def computed_ids(self) -> list[int]:
        return [i for ids, _ in self.calls for i in ids]


def make(model: Callable[[np.ndarray, bool], types.BatchOutput], *, max_batch_size: int = 8,
         max_delay_s: float = 0.01, max_queue: int = 64,
         metrics: Metrics | None = None) -> Batcher:
    return Batcher(model, model="m", version=1, max_batch_size=max_batch_size,
                   max_delay_s=max_delay_s, max_queue=max_queue,
                   metrics=metrics if metrics is not None else Metrics())


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "condition not reached in time"
        await asyncio.sleep(0.002)


def sample(metrics: Metrics, name: str, **extra: str) -> float:
    value = metrics.registry.get_sample_value(name, {**LABELS, **extra})
    return 0.0 if value is None else value


# ---- with the real runtime ---------------------------------------------------------------


def test_concurrent_requests_batch_on_the_real_runtime(digits_bundle: Path) -> None:
    manifest = bundle.read_manifest(digits_bundle)
    centroids = bundle.load_centroids(digits_bundle, manifest)
    runtime = ModelRuntime(digits_bundle, manifest, centroids, device="/CPU:0",
                           batch_sizes=(1, 2, 4, 8, 16))
    runtime.warmup()
    images = (load_digits().images[:40] / 16.0).astype(np.float32)[..., None]
    metrics = Metrics()
    batcher = make(lambda x, rec: runtime.run(x, with_reconstruction=rec), max_batch_size=16,
                   max_delay_s=0.05, max_queue=256, metrics=metrics)

    async def main() -> list[types.BatchOutput]:
        await batcher.start()
        try:
            return await asyncio.gather(*(
                batcher.submit(images[i:i + 1], with_reconstruction=i % 2 == 0)
                for i in range(40)
            ))
        finally:
            await batcher.stop(5.0)

    results = run(main())
    for i, got in enumerate(results):
        alone = runtime.run(images[i:i + 1], with_reconstruction=True)
        assert got.cluster_id.tolist() == alone.cluster_id.tolist()
        np.testing.assert_allclose(got.embedding, alone.embedding, atol=1e-5)
        np.testing.assert_allclose(got.distance, alone.distance, atol=1e-4)
        if i % 2 == 0:
            assert got.reconstruction is not None
            np.testing.assert_allclose(got.reconstruction, alone.reconstruction, atol=1e-5)
        else:
            assert got.reconstruction is None
    batches = sample(metrics, "aecluster_batch_size_count")
    assert sample(metrics, "aecluster_batch_size_sum") == 40
    assert batches < 40, "concurrent requests were not merged"
    assert sample(metrics, "aecluster_batch_size_bucket", le="1.0") < batches  # some batch > 1
    assert sample(metrics, "aecluster_inference_duration_seconds_count") == batches
    assert sample(metrics, "aecluster_queue_depth") == 0
    assert runtime.trace_count() == 2


# ---- with a plain Python model -------------------------------------------------------------


def test_each_caller_gets_its_own_rows() -> None:
    model = PlainModel(seconds=0.005)
    batcher = make(model, max_batch_size=8, max_queue=256)
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 6, size=40).tolist()
    starts = np.cumsum([0, *sizes[:-1]]).tolist()

    async def main() -> list[types.BatchOutput]:
        await batcher.start()
        try:
            return await asyncio.gather(*(
                batcher.submit(ids_images(list(range(s, s + n))), with_reconstruction=False)
                for s, n in zip(starts, sizes, strict=True)
            ))
        finally:
            await batcher.stop(5.0)

    results = run(main())
    for s, n, got in zip(starts, sizes, results, strict=True):
        assert got.cluster_id.tolist() == list(range(s, s + n))
    assert all(len(ids) <= 8 for ids, _ in model.calls)
    assert len(model.calls) < len(sizes)
    assert sorted(model.computed_ids()) == list(range(sum(sizes)))


def test_a_request_larger_than_the_batch_is_split_and_rejoined_in_order() -> None:
    model = PlainModel()
    metrics = Metrics()
    batcher = make(model, max_batch_size=4, metrics=metrics)

    async def main() -> types.BatchOutput:
        await batcher.start()
        try:
            return await batcher.submit(ids_images(list(range(10))), with_reconstruction=True)
        finally:
            await batcher.stop(5.0)

    out = run(main())
    assert [ids for ids, _ in model.calls] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert out.cluster_id.tolist() == list(range(10))
    assert out.reconstruction is not None and out.reconstruction.shape == (10, 2, 2, 1)
    assert out.reconstruction[:, 0, 0, 0].tolist() == list(range(10))
    assert sample(metrics, "aecluster_batch_size_count") == 3


def test_flush_after_max_delay_since_the_oldest_request() -> None:
    model = PlainModel()
    batcher = make(model, max_batch_size=100, max_delay_s=0.2)

    async def timed(ids: list[int]) -> float:
        started = time.monotonic()
        await batcher.submit(ids_images(ids), with_reconstruction=False)
        return time.monotonic() - started

    async def main() -> tuple[float, float]:
        await batcher.start()
        try:
            first = asyncio.create_task(timed([1]))
            await asyncio.sleep(0.1)
            second = asyncio.create_task(timed([2]))
            return await first, await second
        finally:
            await batcher.stop(5.0)

    first, second = run(main())
    assert model.calls == [([1, 2], False)]  # one batch, flushed by the oldest's delay
    assert 0.19 <= first < 0.35
    assert second < 0.18  # it did not get a fresh 0.2 s of its own


def test_flush_at_max_size_without_waiting_for_the_delay() -> None:
    model = PlainModel()
    batcher = make(model, max_batch_size=4, max_delay_s=5.0)

    async def main() -> float:
        await batcher.start()
        try:
            started = time.monotonic()
            await asyncio.gather(*(batcher.submit(ids_images([i]), with_reconstruction=False)
                                   for i in range(4)))
            return time.monotonic() - started
        finally:
            await batcher.stop(5.0)

    assert run(main()) < 1.0
    assert model.calls == [([0, 1, 2, 3], False)]


def test_queue_full_is_refused_at_once_without_memory_growth() -> None:
    gate = threading.Event()
    model = PlainModel(gate=gate)
    metrics = Metrics()
    batcher = make(model, max_batch_size=4, max_queue=8, metrics=metrics)

    async def main() -> None:
        await batcher.start()
        try:
            running = asyncio.create_task(
                batcher.submit(ids_images([0, 1, 2, 3]), with_reconstruction=False))
            await until(lambda: len(model.calls) == 1)  # on the worker, held by the gate
            queued = [asyncio.create_task(batcher.submit(ids_images([i] * 4),
                                                         with_reconstruction=False))
                      for i in (10, 20)]
            await until(lambda: batcher.queued_images == 8)
            assert sample(metrics, "aecluster_queue_depth") == 8

            started = time.monotonic()
            with pytest.raises(errors.QueueFull, match="8 of 8 images waiting") as caught:
                await batcher.submit(ids_images([99]), with_reconstruction=False)
            assert time.monotonic() - started < 0.05
            assert caught.value.retry_after >= 1.0

            # Many refused requests of 4 x 64x64 images (64 KiB each, 32 MiB in all)
            # leave nothing behind.
            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
            for _ in range(500):
                with pytest.raises(errors.QueueFull):
                    await batcher.submit(np.ones((4, 64, 64, 1), np.float32),
                                         with_reconstruction=False)
            grown = tracemalloc.get_traced_memory()[0] - before
            tracemalloc.stop()
            assert grown < 1_000_000, f"memory grew by {grown} bytes"
            assert batcher.queued_images == 8

            gate.set()
            await running
            results = await asyncio.gather(*queued)
            assert [r.cluster_id.tolist() for r in results] == [[10] * 4, [20] * 4]
            assert 99 not in model.computed_ids()
            assert batcher.queued_images == 0 and sample(metrics, "aecluster_queue_depth") == 0
        finally:
            gate.set()
            await batcher.stop(5.0)

    run(main())


def test_a_request_that_can_never_fit_is_too_large() -> None:
    batcher = make(PlainModel(), max_batch_size=4, max_queue=8)

    async def main() -> None:
        await batcher.start()
        try:
            with pytest.raises(errors.PayloadTooLarge, match="send at most 8 per request"):
                await batcher.submit(ids_images(list(range(9))), with_reconstruction=False)
        finally:
            await batcher.stop(5.0)

    run(main())


def test_retry_after_follows_the_measured_call_time() -> None:
    model = PlainModel(seconds=0.25)
    batcher = make(model, max_batch_size=1, max_delay_s=0.0, max_queue=5)

    async def main() -> float:
        await batcher.start()
        try:
            await batcher.submit(ids_images([0]), with_reconstruction=False)  # measured once
            tasks = [asyncio.create_task(batcher.submit(ids_images([1]),
                                                        with_reconstruction=False))]
            await until(lambda: len(model.calls) == 2)  # running
            tasks += [asyncio.create_task(batcher.submit(ids_images([i]),
                                                         with_reconstruction=False))
                      for i in range(2, 7)]
            await until(lambda: batcher.queued_images == 5)
            with pytest.raises(errors.QueueFull) as caught:
                await batcher.submit(ids_images([9]), with_reconstruction=False)
            await asyncio.gather(*tasks)
            return caught.value.retry_after
        finally:
            await batcher.stop(10.0)

    # 5 queued + 1 running batches of ~0.25 s each: about 1.5 s, rounded up.
    assert run(main()) == 2.0


def test_deadline_passing_while_queued_skips_those_images() -> None:
    gate = threading.Event()
    model = PlainModel(gate=gate)
    metrics = Metrics()
    batcher = make(model, max_batch_size=4, metrics=metrics)

    async def main() -> None:
        await batcher.start()
        try:
            running = asyncio.create_task(batcher.submit(ids_images([1]),
                                                         with_reconstruction=False))
            await until(lambda: len(model.calls) == 1)
            late = asyncio.create_task(batcher.submit(ids_images([7, 7]),
                                                      with_reconstruction=False))
            started = time.monotonic()
            with pytest.raises(errors.DeadlineExceeded,
                               match="while it was queued: none of its 3 images"):
                await batcher.submit(ids_images([5, 5, 5]), with_reconstruction=False,
                                     deadline=time.monotonic() + 0.1)
            assert 0.09 <= time.monotonic() - started < 0.5
            assert batcher.queued_images == 2  # only the request without a deadline
            assert sample(metrics, "aecluster_queue_depth") == 2
            with pytest.raises(errors.DeadlineExceeded, match="before the request reached"):
                await batcher.submit(ids_images([6]), with_reconstruction=False,
                                     deadline=time.monotonic() - 0.01)
            gate.set()
            assert (await running).cluster_id.tolist() == [1]
            assert (await late).cluster_id.tolist() == [7, 7]
        finally:
            gate.set()
            await batcher.stop(5.0)

    run(main())
    assert 5 not in model.computed_ids() and 6 not in model.computed_ids()


def test_a_deadline_in_time_does_not_interfere() -> None:
    model = PlainModel()
    batcher = make(model)

    async def main() -> types.BatchOutput:
        await batcher.start()
        try:
            return await batcher.submit(ids_images(list(range(20))), with_reconstruction=False,
                                        deadline=time.monotonic() + 5.0)
        finally:
            await batcher.stop(5.0)

    assert run(main()).cluster_id.tolist() == list(range(20))


def test_a_model_exception_reaches_every_waiter_and_the_batcher_recovers() -> None:
    model = PlainModel()
    batcher = make(model, max_batch_size=3, max_delay_s=0.05)

    async def all_fail() -> list[BaseException | types.BatchOutput]:
        return await asyncio.gather(
            *(batcher.submit(ids_images([i]), with_reconstruction=False) for i in range(6)),
            return_exceptions=True,
        )

    async def main() -> None:
        await batcher.start()
        try:
            boom = RuntimeError("boom")
            model.fail = boom
            outcomes = await all_fail()
            assert len(model.calls) == 2  # two batches of three, both failed
            for outcome in outcomes:
                assert isinstance(outcome, errors.InternalError)
                assert outcome.__cause__ is boom
                assert "model call of model m version 1 failed" in str(outcome)

            model.fail = errors.InvalidInput("image 0 has the wrong shape")
            for outcome in await all_fail():
                assert isinstance(outcome, errors.InvalidInput)
                assert str(outcome) == "image 0 has the wrong shape"

            model.fail = None
            out = await batcher.submit(ids_images([42]), with_reconstruction=False)
            assert out.cluster_id.tolist() == [42]
        finally:
            await batcher.stop(5.0)

    run(main())


def test_a_failing_part_of_a_split_request_fails_the_request(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # No log records: pytest keeps them, and their tracebacks would keep the failed
    # futures alive past the check below.
    monkeypatch.setattr(logging.getLogger("service.batcher"), "disabled", True)
    gate = threading.Event()
    model = PlainModel(gate=gate)
    model.fail = RuntimeError("first batch fails")
    batcher = make(model, max_batch_size=2)
    unhandled: list[str] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(
            lambda _loop, context: unhandled.append(context["message"]))
        await batcher.start()
        try:
            task = asyncio.create_task(batcher.submit(ids_images(list(range(6))),
                                                      with_reconstruction=False))
            await until(lambda: len(model.calls) == 1)
            assert batcher.queued_images == 4
            gate.set()
            with pytest.raises(errors.InternalError):
                await task
            assert batcher.queued_images == 0  # the remaining parts were withdrawn
        finally:
            gate.set()
            await batcher.stop(5.0)

    run(main())
    assert model.computed_ids() == [0, 1]
    # Drop the model's exception (its traceback holds the batch), then collect: asyncio
    # reports future errors nobody retrieved when the futures are collected.
    model.fail = None
    gc.collect()
    assert unhandled == []


def test_mixed_reconstruction_flags_share_a_batch() -> None:
    model = PlainModel()
    batcher = make(model, max_batch_size=8, max_delay_s=0.05)

    async def main() -> list[types.BatchOutput]:
        await batcher.start()
        try:
            return await asyncio.gather(
                batcher.submit(ids_images([1]), with_reconstruction=True),
                batcher.submit(ids_images([2]), with_reconstruction=False),
            )
        finally:
            await batcher.stop(5.0)

    with_recon, without = run(main())
    assert model.calls == [([1, 2], True)]
    assert with_recon.reconstruction is not None and without.reconstruction is None


def test_different_image_shapes_never_share_a_batch() -> None:
    model = PlainModel()
    batcher = make(model, max_batch_size=8, max_delay_s=0.05)

    async def main() -> list[types.BatchOutput]:
        await batcher.start()
        try:
            return await asyncio.gather(
                batcher.submit(ids_images([1], side=2), with_reconstruction=False),
                batcher.submit(ids_images([2], side=3), with_reconstruction=False),
                batcher.submit(ids_images([3], side=3), with_reconstruction=False),
            )
        finally:
            await batcher.stop(5.0)

    results = run(main())
    assert [r.cluster_id.tolist() for r in results] == [[1], [2], [3]]
    assert [ids for ids, _ in model.calls] == [[1], [2, 3]]


def test_the_model_runs_on_a_worker_thread_and_the_loop_stays_free() -> None:
    model = PlainModel(seconds=0.3)
    batcher = make(model)

    async def main() -> int:
        await batcher.start()
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        tick_task = asyncio.create_task(ticker())
        try:
            await batcher.submit(ids_images([1]), with_reconstruction=False)
        finally:
            tick_task.cancel()
            await batcher.stop(5.0)
        return ticks

    assert run(main()) >= 10  # the loop ran while the model slept 0.3 s
    assert threading.get_ident() not in model.threads and len(model.threads) == 1


def test_the_worker_forms_the_next_batch_while_the_loop_is_busy() -> None:
    # Issue 38: the model must not wait for the event loop between two calls. Three
    # one-image batches are queued, then the loop is held (as parsing and answering other
    # requests hold it under load): all three are computed meanwhile.
    gate = threading.Event()
    model = PlainModel(gate=gate)
    batcher = make(model, max_batch_size=1, max_delay_s=0.0)

    async def main() -> None:
        await batcher.start()
        try:
            tasks = [asyncio.create_task(batcher.submit(ids_images([i]),
                                                        with_reconstruction=False))
                     for i in range(3)]
            await until(lambda: len(model.calls) == 1 and batcher.queued_images == 2)
            gate.set()
            time.sleep(0.5)  # the event loop is blocked; the worker is not
            assert model.computed_ids() == [0, 1, 2]
            assert [(await task).cluster_id.tolist() for task in tasks] == [[0], [1], [2]]
        finally:
            gate.set()
            await batcher.stop(5.0)

    run(main())


def test_stop_finishes_queued_work_and_refuses_new_work() -> None:
    model = PlainModel(seconds=0.02)
    batcher = make(model, max_batch_size=2, max_delay_s=0.5)

    async def main() -> None:
        await batcher.start()
        tasks = [asyncio.create_task(batcher.submit(ids_images([i]), with_reconstruction=False))
                 for i in range(10)]
        await until(lambda: batcher.queued_images + sum(len(c[0]) for c in model.calls) == 10)
        started = time.monotonic()
        await batcher.stop(5.0)
        # Stopping flushes at once instead of waiting out the 0.5 s delay per batch.
        assert time.monotonic() - started < 1.0
        results = [await t for t in tasks]
        assert [r.cluster_id.tolist() for r in results] == [[i] for i in range(10)]
        with pytest.raises(errors.Unavailable, match="not accepting requests"):
            await batcher.submit(ids_images([11]), with_reconstruction=False)
        with pytest.raises(errors.Unavailable, match="cannot restart"):
            await batcher.start()

    run(main())


def test_stop_timeout_refuses_what_is_left() -> None:
    gate = threading.Event()
    model = PlainModel(gate=gate)
    batcher = make(model, max_batch_size=1)

    async def main() -> None:
        await batcher.start()
        tasks = [asyncio.create_task(batcher.submit(ids_images([i]), with_reconstruction=False))
                 for i in range(3)]
        await until(lambda: len(model.calls) == 1 and batcher.queued_images == 2)
        started = time.monotonic()
        try:
            await batcher.stop(0.2)
        finally:
            gate.set()
        assert 0.15 < time.monotonic() - started < 1.0
        for task in tasks:
            with pytest.raises(errors.Unavailable, match="stopped before"):
                await task
        assert batcher.queued_images == 0

    run(main())


def test_not_started_and_bad_arguments() -> None:
    batcher = make(PlainModel())

    async def main() -> None:
        with pytest.raises(errors.Unavailable, match="not started"):
            await batcher.submit(ids_images([1]), with_reconstruction=False)
        await batcher.start()
        try:
            with pytest.raises(errors.InvalidInput, match="at least one image"):
                await batcher.submit(np.zeros((0, 2, 2, 1), np.float32),
                                     with_reconstruction=False)
        finally:
            await batcher.stop(1.0)

    run(main())
    for kwargs, message in [({"max_batch_size": 0}, "max_batch_size"),
                            ({"max_queue": 0}, "max_queue"),
                            ({"max_delay_s": -1.0}, "max_delay_s")]:
        with pytest.raises(ValueError, match=message):
            make(PlainModel(), **kwargs)


def test_caller_cancellation_withdraws_its_images() -> None:
    gate = threading.Event()
    model = PlainModel(gate=gate)
    batcher = make(model, max_batch_size=4)

    async def main() -> None:
        await batcher.start()
        try:
            running = asyncio.create_task(batcher.submit(ids_images([1]),
                                                         with_reconstruction=False))
            await until(lambda: len(model.calls) == 1)
            gone = asyncio.create_task(batcher.submit(ids_images([8, 8, 8]),
                                                      with_reconstruction=False))
            await until(lambda: batcher.queued_images == 3)
            gone.cancel()  # e.g. a gRPC client that hung up
            with pytest.raises(asyncio.CancelledError):
                await gone
            assert batcher.queued_images == 0
            gate.set()
            await running
        finally:
            gate.set()
            await batcher.stop(5.0)

    run(main())
    assert 8 not in model.computed_ids()



def test_observe_sees_each_computed_batch_once_on_the_worker_thread() -> None:
    model = PlainModel()
    seen: list[tuple[list[int], int]] = []
    batcher = Batcher(model, model="m", version=1, max_batch_size=8, max_delay_s=0.05,
                      max_queue=64, metrics=Metrics(),
                      observe=lambda out: seen.append((out.cluster_id.tolist(),
                                                       threading.get_ident())))

    async def main() -> None:
        await batcher.start()
        try:
            await asyncio.gather(*(batcher.submit(ids_images([i]), with_reconstruction=False)
                                   for i in range(3)))
        finally:
            await batcher.stop(5.0)

    run(main())
    # One batch of three requests: observed once, with all three rows, where the model ran.
    assert [ids for ids, _ in seen] == [[0, 1, 2]]
    assert {thread for _, thread in seen} == model.threads


def test_a_failing_observer_is_logged_and_the_answers_still_go_out(
        caplog: pytest.LogCaptureFixture) -> None:
    def broken(output: types.BatchOutput) -> None:
        raise RuntimeError("metrics backend gone")

    batcher = Batcher(PlainModel(), model="m", version=1, max_batch_size=8, max_delay_s=0.0,
                      max_queue=64, metrics=Metrics(), observe=broken)

    async def main() -> types.BatchOutput:
        await batcher.start()
        try:
            return await batcher.submit(ids_images([4]), with_reconstruction=False)
        finally:
            await batcher.stop(5.0)

    assert run(main()).cluster_id.tolist() == [4]
    assert "recording the metrics of a batch of model m version 1 failed" in caplog.text
