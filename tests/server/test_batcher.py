"""Dynamic batching semantics: batch formation, per-caller results in order, bounded queue, timeouts, draining."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from edgeslim.server.batcher import DynamicBatcher
from edgeslim.server.errors import RequestTimeoutError, ServerBusyError


class Model:
    """A real (numpy) model that records the batch sizes it ran and can be made slow."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.batches: list[int] = []
        self.delay_s = delay_s
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, feeds):
        self.gate.wait(10)
        time.sleep(self.delay_s)
        x = feeds["x"]
        self.batches.append(x.shape[0])
        return {"y": x * 2 + 1, "s": x.sum(axis=tuple(range(1, x.ndim)))}


def run(coro):
    return asyncio.run(coro)


def feeds(n: int, seed: int, width: int = 3):
    return {"x": np.random.default_rng(seed).standard_normal((n, width)).astype(np.float32)}


def test_concurrent_requests_are_batched_and_each_caller_gets_its_own_rows():
    model = Model()

    async def main():
        b = DynamicBatcher(model, max_batch=16, delay_s=0.05, queue_size=100)
        b.start()
        reqs = [feeds(n, seed) for seed, n in enumerate([1, 3, 2, 1, 4, 2])]
        results = await asyncio.gather(*(b.submit(r, timeout_s=5) for r in reqs))
        await b.close()
        return reqs, results

    reqs, results = run(main())
    for r, (out, timing) in zip(reqs, results):
        np.testing.assert_array_equal(out["y"], r["x"] * 2 + 1)
        np.testing.assert_allclose(out["s"], r["x"].sum(axis=1), rtol=1e-6)
        assert timing.batch_size == 13
    assert model.batches == [13]  # one execution for all six callers


def test_max_batch_splits_and_preserves_arrival_order():
    model = Model()

    async def main():
        b = DynamicBatcher(model, max_batch=4, delay_s=0.05, queue_size=100)
        b.start()
        reqs = [feeds(n, seed) for seed, n in enumerate([3, 2, 1, 2])]
        results = await asyncio.gather(*(b.submit(r, timeout_s=5) for r in reqs))
        await b.close()
        return reqs, results

    reqs, results = run(main())
    # FIFO with later requests that fit joining: [3, 1] then [2, 2]; never more than 4.
    assert model.batches == [4, 4]
    for r, (out, _) in zip(reqs, results):
        np.testing.assert_array_equal(out["y"], r["x"] * 2 + 1)


def test_different_item_shapes_never_share_a_batch():
    model = Model()

    async def main():
        b = DynamicBatcher(model, max_batch=8, delay_s=0.05, queue_size=100)
        b.start()
        reqs = [feeds(1, 0, width=3), feeds(1, 1, width=5), feeds(1, 2, width=3)]
        results = await asyncio.gather(*(b.submit(r, timeout_s=5) for r in reqs))
        await b.close()
        return reqs, results

    reqs, results = run(main())
    assert sorted(model.batches) == [1, 2]
    for r, (out, _) in zip(reqs, results):
        np.testing.assert_array_equal(out["y"], r["x"] * 2 + 1)


def test_preferred_size_runs_without_waiting_for_the_delay():
    model = Model()

    async def main():
        b = DynamicBatcher(model, max_batch=8, delay_s=5.0, preferred=(2,), queue_size=100)
        b.start()
        t = time.perf_counter()
        await asyncio.gather(b.submit(feeds(1, 0), timeout_s=10), b.submit(feeds(1, 1), timeout_s=10))
        took = time.perf_counter() - t
        await b.close()
        return took

    assert run(main()) < 1.0  # far below the 5 s delay
    assert model.batches == [2]


def test_a_lone_request_waits_at_most_the_delay():
    model = Model()

    async def main():
        b = DynamicBatcher(model, max_batch=8, delay_s=0.2, queue_size=100)
        b.start()
        t = time.perf_counter()
        _, timing = await b.submit(feeds(1, 0), timeout_s=10)
        took = time.perf_counter() - t
        await b.close()
        return took, timing

    took, timing = run(main())
    assert 0.19 <= took < 1.5 and timing.queue_ns >= 0.19e9


def test_disabled_batching_runs_each_request_alone():
    model = Model()

    async def main():
        b = DynamicBatcher(model, max_batch=8, delay_s=0.05, queue_size=100, enabled=False)
        b.start()
        await asyncio.gather(*(b.submit(feeds(2, s), timeout_s=5) for s in range(4)))
        await b.close()

    run(main())
    assert model.batches == [2, 2, 2, 2]


def test_full_queue_refuses_at_once_instead_of_growing():
    model = Model()
    model.gate.clear()  # the model blocks until released

    async def main():
        b = DynamicBatcher(model, max_batch=1, delay_s=0.0, queue_size=2, enabled=False)
        b.start()
        first = asyncio.ensure_future(b.submit(feeds(1, 0), timeout_s=10))
        await asyncio.sleep(0.1)  # first is executing (blocked), the queue is empty
        queued = [asyncio.ensure_future(b.submit(feeds(1, s), timeout_s=10)) for s in (1, 2)]
        await asyncio.sleep(0.05)
        with pytest.raises(ServerBusyError, match="queue is full") as info:
            await b.submit(feeds(1, 3), timeout_s=10)
        assert info.value.retry_after_s >= 1
        assert b.pending == 3
        model.gate.set()
        done = await asyncio.gather(first, *queued)
        await b.close()
        return done

    assert len(run(main())) == 3
    assert model.batches == [1, 1, 1]


def test_timed_out_request_is_dropped_from_the_queue():
    model = Model()
    model.gate.clear()

    async def main():
        b = DynamicBatcher(model, max_batch=1, delay_s=0.0, queue_size=10, enabled=False)
        b.start()
        blocker = asyncio.ensure_future(b.submit(feeds(1, 0), timeout_s=10))
        await asyncio.sleep(0.05)
        with pytest.raises(RequestTimeoutError, match="did not answer within 0.1 s"):
            await b.submit(feeds(1, 1), timeout_s=0.1)
        assert b.pending == 1  # only the executing one is left
        model.gate.set()
        await blocker
        await b.close()

    run(main())
    assert model.batches == [1]  # the timed-out request never ran


def test_close_finishes_queued_requests_then_refuses_new_ones():
    model = Model(delay_s=0.02)

    async def main():
        b = DynamicBatcher(model, max_batch=2, delay_s=10.0, queue_size=10)
        b.start()
        pending = [asyncio.ensure_future(b.submit(feeds(1, s), timeout_s=30)) for s in range(5)]
        await asyncio.sleep(0.05)
        t = time.perf_counter()
        await b.close()  # must not wait for the 10 s delay
        took = time.perf_counter() - t
        results = await asyncio.gather(*pending)
        with pytest.raises(ServerBusyError, match="shutting down"):
            await b.submit(feeds(1, 9), timeout_s=1)
        return took, results

    took, results = run(main())
    assert took < 2.0 and len(results) == 5 and sum(model.batches) == 5


def test_model_error_reaches_every_caller_of_the_batch_and_the_worker_survives():
    calls = []

    def flaky(f):
        calls.append(f["x"].shape[0])
        if len(calls) == 1:
            raise RuntimeError("device lost")
        return {"y": f["x"]}

    async def main():
        b = DynamicBatcher(flaky, max_batch=8, delay_s=0.05, queue_size=10)
        b.start()
        res = await asyncio.gather(*(b.submit(feeds(1, s), timeout_s=5) for s in range(2)), return_exceptions=True)
        ok = await b.submit(feeds(1, 5), timeout_s=5)
        await b.close()
        return res, ok

    res, ok = run(main())
    assert all(isinstance(r, RuntimeError) for r in res)
    assert ok[0]["y"].shape == (1, 3)


def test_zero_delay_runs_at_once_and_batches_whatever_queued_meanwhile():
    model = Model()
    model.gate.clear()

    async def main():
        b = DynamicBatcher(model, max_batch=8, delay_s=0.0, queue_size=100)
        b.start()
        first = asyncio.ensure_future(b.submit(feeds(1, 0), timeout_s=10))
        await asyncio.sleep(0.05)  # executing (blocked in the model): the next three queue up behind it
        rest = [asyncio.ensure_future(b.submit(feeds(1, s), timeout_s=10)) for s in (1, 2, 3)]
        await asyncio.sleep(0.05)
        model.gate.set()
        t = time.perf_counter()
        await asyncio.gather(first, *rest)
        took = time.perf_counter() - t
        await b.close()
        return took

    assert run(main()) < 1.0
    assert model.batches == [1, 3]  # no timer: the queued three run together as soon as the model is free


def test_a_cancelled_caller_is_never_run():
    model = Model()
    model.gate.clear()

    async def main():
        b = DynamicBatcher(model, max_batch=1, delay_s=0.0, queue_size=10, enabled=False)
        b.start()
        blocker = asyncio.ensure_future(b.submit(feeds(1, 0), timeout_s=10))
        await asyncio.sleep(0.05)
        gone = asyncio.ensure_future(b.submit(feeds(1, 1), timeout_s=10))
        await asyncio.sleep(0.05)
        gone.cancel()  # e.g. the handler's task was cancelled
        await asyncio.sleep(0.01)
        model.gate.set()
        await blocker
        ok = await b.submit(feeds(2, 2), timeout_s=10)
        await b.close()
        return ok

    ok, _ = run(main())
    assert ok["y"].shape == (2, 3)
    assert model.batches == [1, 2]  # the cancelled request's compute was skipped


class ThreadRecorder(Model):
    """Model that also records which thread ran each execution."""

    def __init__(self, delay_s: float = 0.0) -> None:
        super().__init__(delay_s)
        self.threads: list[str] = []

    def __call__(self, feeds):
        self.threads.append(threading.current_thread().name)
        return super().__call__(feeds)


def test_an_idle_batcher_runs_a_lone_request_in_the_callers_thread():
    model = ThreadRecorder()
    batches = []

    async def main():
        b = DynamicBatcher(model, max_batch=8, delay_s=0.0, enabled=False, inline=True, on_batch=batches.append)
        b.start()
        x = feeds(2, 0)
        out, timing = await b.submit(x, timeout_s=5, inline=True)  # alone and idle: runs here
        np.testing.assert_array_equal(out["y"], x["x"] * 2 + 1)
        assert timing.queue_ns == 0 and timing.batch_size == 2 and b.pending == 0
        await b.submit(feeds(1, 1), timeout_s=5)  # the caller does not say it is alone: the inference thread
        # several callers at once: the first may go inline, the rest queue (never two executions at a time)
        outs = await asyncio.gather(*(b.submit(feeds(1, s), timeout_s=5, inline=True) for s in range(2, 6)))
        for s, (o, _) in zip(range(2, 6), outs):
            np.testing.assert_array_equal(o["y"], feeds(1, s)["x"] * 2 + 1)
        await b.close()

    run(main())
    assert model.threads[0] == "MainThread" and model.threads[1] == "infer-model"
    assert len(model.threads) == 6 and len(batches) == 6  # every execution is reported to the statistics


@pytest.mark.parametrize("kwargs", [
    {"enabled": True, "delay_s": 0.01},  # a batching delay promises to wait for partners
    {"enabled": False, "delay_s": 0.0, "cpus": (0,)},  # pinned inference stays on its CPUs
])
def test_no_inline_run_with_a_batching_delay_or_pinned_inference(kwargs):
    model = ThreadRecorder()

    async def main():
        b = DynamicBatcher(model, max_batch=8, queue_size=10, inline=True, **kwargs)
        b.start()
        await b.submit(feeds(1, 0), timeout_s=5, inline=True)
        await b.close()

    run(main())
    assert model.threads == ["infer-model"]


def test_an_inline_run_past_the_timeout_answers_504_like_a_queued_one():
    model = Model(delay_s=0.3)

    async def main():
        b = DynamicBatcher(model, max_batch=8, delay_s=0.0, enabled=False, inline=True)
        b.start()
        with pytest.raises(RequestTimeoutError, match="did not answer within 0.1 s"):
            await b.submit(feeds(1, 0), timeout_s=0.1, inline=True)
        assert b.pending == 0
        await b.close()

    run(main())
