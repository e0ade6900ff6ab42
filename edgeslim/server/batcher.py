"""Dynamic batching with Triton's semantics, on asyncio.

Requests wait in a bounded FIFO per model. One worker takes the oldest request and, while the batch is below
``max_batch`` and not at a preferred size, waits up to ``delay_s`` (measured from the oldest request's arrival) for
more requests of the same per-item shape to join; then it concatenates their inputs along the batch axis, runs
the model once in a dedicated thread, splits the outputs and hands each caller its own rows, in order.

A full queue raises :class:`ServerBusyError` at once (503 + Retry-After) instead of growing without bound; a
caller that times out is dropped from the queue so its slot and compute are not wasted.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .errors import RequestTimeoutError, ServerBusyError

Feeds = dict[str, np.ndarray]
RunFn = Callable[[Feeds], dict[str, np.ndarray]]


@dataclass
class Timing:
    """Where one request's time went, in nanoseconds (feeds the statistics and metrics)."""

    queue_ns: int = 0
    compute_input_ns: int = 0
    compute_infer_ns: int = 0
    compute_output_ns: int = 0
    batch_size: int = 0


@dataclass
class BatchRecord:
    """One execution of the model, reported to ``on_batch``."""

    batch_size: int
    requests: int
    compute_input_ns: int
    compute_infer_ns: int
    compute_output_ns: int


@dataclass(eq=False)
class _Pending:
    feeds: Feeds
    n: int
    key: tuple
    future: asyncio.Future
    enqueued_ns: int = field(default_factory=time.perf_counter_ns)


class DynamicBatcher:
    """Queue + worker for one model.

    Args:
        run: runs validated feeds (batch axis 0) and returns every output by name. Called in a worker thread.
        max_batch: most items one execution may hold.
        delay_s: longest the oldest request waits for others (0: run whatever is queued now).
        preferred: batch sizes that run without waiting.
        queue_size: most requests waiting; more raise :class:`ServerBusyError`.
        enabled: False runs every request alone (no batching), still through the bounded queue.
        on_batch: called in the event loop after every execution.
    """

    def __init__(
        self,
        run: RunFn,
        *,
        max_batch: int,
        delay_s: float,
        preferred: tuple[int, ...] = (),
        queue_size: int = 64,
        enabled: bool = True,
        on_batch: Callable[[BatchRecord], None] | None = None,
        name: str = "model",
    ) -> None:
        self._run = run
        self.max_batch = max_batch
        self.delay_s = delay_s
        self.preferred = tuple(sorted(p for p in preferred if p <= max_batch))
        self.queue_size = queue_size
        self.enabled = enabled and max_batch > 1
        self._on_batch = on_batch
        self._name = name
        self._queue: collections.deque[_Pending] = collections.deque()
        self._executing = 0
        self._cond: asyncio.Condition | None = None
        self._task: asyncio.Task | None = None
        self._closing = False
        # One thread per model: backends need not be thread-safe and the batch is the unit of parallelism.
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"infer-{name}")

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker in the running event loop."""
        self._cond = asyncio.Condition()
        self._task = asyncio.get_running_loop().create_task(self._worker(), name=f"batcher-{self._name}")

    async def close(self) -> None:
        """Stop taking requests, run everything already queued (without waiting for the delay), then stop."""
        self._closing = True
        if self._cond is not None:
            async with self._cond:
                self._cond.notify_all()
        if self._task is not None:
            await self._task
        self._pool.shutdown(wait=True)

    @property
    def pending(self) -> int:
        """Requests queued or executing."""
        return len(self._queue) + self._executing

    # -- submit ------------------------------------------------------------------------------------------------
    async def submit(self, feeds: Feeds, *, timeout_s: float) -> tuple[dict[str, np.ndarray], Timing]:
        """Queue validated ``feeds`` (all with the same batch size on axis 0) and wait for this request's outputs.

        Raises:
            ServerBusyError: the queue is full or the server is shutting down.
            RequestTimeoutError: no answer within ``timeout_s``.
        """
        if self._closing or self._cond is None:
            raise ServerBusyError(f"model '{self._name}' is shutting down; retry on another instance", 5.0)
        if len(self._queue) >= self.queue_size:
            raise ServerBusyError(
                f"model '{self._name}' has {self.queue_size} requests waiting (the queue is full); retry shortly",
                retry_after_s=max(1.0, self.delay_s),
            )
        first = next(iter(feeds.values()))
        n = int(first.shape[0]) if first.ndim else 1
        key = tuple((k, v.dtype.str, v.shape[1:]) for k, v in sorted(feeds.items()))
        item = _Pending(feeds, n, key, asyncio.get_running_loop().create_future())
        async with self._cond:
            self._queue.append(item)
            self._cond.notify_all()
        try:
            return await asyncio.wait_for(asyncio.shield(item.future), timeout_s)
        except asyncio.TimeoutError:
            # Still queued: take it out so the model never runs it. Already running: its result is dropped.
            try:
                self._queue.remove(item)
            except ValueError:
                pass
            item.future.cancel()
            raise RequestTimeoutError(
                f"model '{self._name}' did not answer within {timeout_s:g} s (queue + compute); "
                "retry, send smaller batches, or raise the server's request timeout"
            ) from None

    # -- worker ------------------------------------------------------------------------------------------------
    def _select(self) -> list[_Pending]:
        """The oldest request plus later ones of the same per-item shape that fit in ``max_batch``, in order."""
        head = self._queue[0]
        if not self.enabled:
            return [head]
        chosen, total = [head], head.n
        for item in list(self._queue)[1:]:
            if total >= self.max_batch:
                break
            if item.key == head.key and total + item.n <= self.max_batch:
                chosen.append(item)
                total += item.n
        return chosen

    def _ready(self, chosen: list[_Pending]) -> bool:
        total = sum(p.n for p in chosen)
        if not self.enabled or self._closing or total >= self.max_batch or total in self.preferred:
            return True
        if self.preferred and total > self.preferred[-1]:
            return True
        return time.perf_counter_ns() - chosen[0].enqueued_ns >= self.delay_s * 1e9

    async def _worker(self) -> None:
        cond = self._cond
        loop = asyncio.get_running_loop()
        while True:
            async with cond:
                while not self._queue and not self._closing:
                    await cond.wait()
                if not self._queue and self._closing:
                    return
                while True:
                    chosen = self._select()
                    if self._ready(chosen):
                        break
                    left = self.delay_s - (time.perf_counter_ns() - chosen[0].enqueued_ns) / 1e9
                    try:
                        await asyncio.wait_for(cond.wait(), max(left, 0.0))
                    except asyncio.TimeoutError:
                        pass
                    if not self._queue:
                        break
                if not self._queue:
                    continue
                chosen = self._select()
                for p in chosen:
                    self._queue.remove(p)
            chosen = [p for p in chosen if not p.future.done()]
            if not chosen:
                continue
            self._executing = len(chosen)
            start_ns = time.perf_counter_ns()
            try:
                outputs, rec = await loop.run_in_executor(self._pool, self._execute, [p.feeds for p in chosen])
            except BaseException as exc:  # the model failed: every caller in the batch gets the error
                for p in chosen:
                    if not p.future.done():
                        p.future.set_exception(exc)
                self._executing = 0
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            self._executing = 0
            rec.requests = len(chosen)
            for p, out in zip(chosen, outputs):
                if not p.future.done():
                    p.future.set_result(
                        (
                            out,
                            Timing(
                                queue_ns=start_ns - p.enqueued_ns,
                                compute_input_ns=rec.compute_input_ns,
                                compute_infer_ns=rec.compute_infer_ns,
                                compute_output_ns=rec.compute_output_ns,
                                batch_size=rec.batch_size,
                            ),
                        )
                    )
            if self._on_batch is not None:
                self._on_batch(rec)

    def _execute(self, feeds_list: list[Feeds]) -> tuple[list[dict[str, np.ndarray]], BatchRecord]:
        t0 = time.perf_counter_ns()
        if len(feeds_list) == 1:
            feeds = feeds_list[0]
        else:
            feeds = {k: np.concatenate([f[k] for f in feeds_list], axis=0) for k in feeds_list[0]}
        sizes = [int(next(iter(f.values())).shape[0]) for f in feeds_list]
        t1 = time.perf_counter_ns()
        out = self._run(feeds)
        t2 = time.perf_counter_ns()
        if len(feeds_list) == 1:
            parts = [out]
        else:
            bounds = np.cumsum(sizes)[:-1]
            split = {k: np.split(v, bounds, axis=0) for k, v in out.items()}
            parts = [{k: split[k][i] for k in out} for i in range(len(feeds_list))]
        t3 = time.perf_counter_ns()
        return parts, BatchRecord(sum(sizes), len(feeds_list), t1 - t0, t2 - t1, t3 - t2)
