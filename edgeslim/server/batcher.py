"""Dynamic batching with Triton's semantics: a bounded FIFO per model, scheduled by one inference thread.

Requests wait in a bounded FIFO per model. The model's inference thread takes the oldest request and, while the
batch is below ``max_batch`` and not at a preferred size, waits up to ``delay_s`` (measured from the oldest request's
arrival) for more requests of the same per-item shape to join; then it concatenates their inputs along the batch
axis, runs the model once, splits the outputs and hands each caller its own rows, in order.

The scheduling runs in the inference thread itself rather than in an asyncio task that hands each batch to a thread
pool: a request then costs one wake-up of that thread and one ``call_soon_threadsafe`` back into the event loop, no
thread-pool hop and no extra event-loop round trips, which is most of the server's own latency for a small model.
With batching off, or with ``delay_s`` 0, no timer runs at all: a request is executed as soon as the thread is free.

An idle server skips even that (when no batching delay applies): when the caller knows no other request is in the
server (``submit(inline=True)``) and the queue is empty with nothing executing, the request runs right away in the
event loop's thread. The two thread hand-offs (wake the inference thread, wake the loop again) cost about 0.35 ms
per request on a 2-core x86 box, a sixth of the server's own overhead at concurrency 1. The loop is busy for that
one compute; a request arriving meanwhile is read right after it and takes the queue.

A full queue raises :class:`ServerBusyError` at once (503 + Retry-After) instead of growing without bound; a
caller that times out is dropped from the queue so its slot and compute are not wasted.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .errors import RequestTimeoutError, ServerBusyError

log = logging.getLogger("edgeslim.server")

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

    def timing(self, queue_ns: int) -> Timing:
        """One request's :class:`Timing` in this execution, after ``queue_ns`` in the queue."""
        return Timing(queue_ns=queue_ns, compute_input_ns=self.compute_input_ns,
                      compute_infer_ns=self.compute_infer_ns, compute_output_ns=self.compute_output_ns,
                      batch_size=self.batch_size)


@dataclass(eq=False)
class _Pending:
    feeds: Feeds
    n: int
    key: tuple
    future: asyncio.Future
    enqueued_ns: int = field(default_factory=time.perf_counter_ns)


def _deliver(chosen: list[_Pending], results: list[Any], error: BaseException | None) -> None:
    """In the event loop: resolve each caller's future (callers that timed out or left are skipped)."""
    for i, p in enumerate(chosen):
        if p.future.done():
            continue
        if error is not None:
            p.future.set_exception(error)
        else:
            p.future.set_result(results[i])


class DynamicBatcher:
    """Queue + inference thread for one model.

    Args:
        run: runs validated feeds (batch axis 0) and returns every output by name. Called in the inference thread.
        max_batch: most items one execution may hold.
        delay_s: longest the oldest request waits for others (0: run whatever is queued now).
        preferred: batch sizes that run without waiting.
        queue_size: most requests waiting; more raise :class:`ServerBusyError`.
        enabled: False runs every request alone (no batching), still through the bounded queue.
        on_batch: called in the event loop after every execution.
        cpus: CPUs the inference thread is pinned to (Linux); None: wherever the process may run.
        inline: let ``submit(inline=True)`` run a request in the calling (event loop) thread when the batcher is
            idle; only for backends that may be called from any thread. Off when ``cpus`` pins inference, and
            when batching with a delay (the delay waits for partners, as Triton's does).
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
        cpus: tuple[int, ...] | None = None,
        inline: bool = False,
    ) -> None:
        self._run = run
        self._cpus = cpus
        self.max_batch = max_batch
        self.delay_s = delay_s
        self.preferred = tuple(sorted(p for p in preferred if p <= max_batch))
        self.queue_size = queue_size
        self.enabled = enabled and max_batch > 1
        # pinned inference stays on its CPUs; a batching delay is a promise to wait for partners, so it is kept
        self.inline = inline and not cpus and (not self.enabled or delay_s <= 0)
        self._on_batch = on_batch
        self._name = name
        self._queue: collections.deque[_Pending] = collections.deque()
        self._executing = 0
        # One thread per model: backends need not be thread-safe and the batch is the unit of parallelism.
        self._cond = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Future | None = None
        self._closing = False

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the inference thread; results are delivered to the running event loop."""
        self._loop = asyncio.get_running_loop()
        self._stopped = self._loop.create_future()
        self._thread = threading.Thread(target=self._serve, name=f"infer-{self._name}", daemon=True)
        self._thread.start()

    async def close(self) -> None:
        """Stop taking requests, run everything already queued (without waiting for the delay), then stop."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._stopped is not None:
            await self._stopped
        if self._thread is not None:
            self._thread.join()

    @property
    def pending(self) -> int:
        """Requests queued or executing."""
        return len(self._queue) + self._executing

    # -- submit ------------------------------------------------------------------------------------------------
    async def submit(
        self, feeds: Feeds, *, timeout_s: float, inline: bool = False
    ) -> tuple[dict[str, np.ndarray], Timing]:
        """Queue validated ``feeds`` (all with the same batch size on axis 0) and wait for this request's outputs.

        Args:
            inline: the caller has no other request in flight: if the batcher allows it and is idle, run now in
                this thread instead of queueing (see the module docstring).

        Raises:
            ServerBusyError: the queue is full or the server is shutting down.
            RequestTimeoutError: no answer within ``timeout_s``.
        """
        loop = self._loop
        if self._closing or loop is None:
            raise ServerBusyError(f"model '{self._name}' is shutting down; retry on another instance", 5.0)
        if len(self._queue) >= self.queue_size:
            raise ServerBusyError(
                f"model '{self._name}' has {self.queue_size} requests waiting (the queue is full); retry shortly",
                retry_after_s=max(1.0, self.delay_s),
            )
        if inline and self.inline:
            with self._cond:
                idle = not self._queue and not self._executing
                if idle:
                    self._executing = 1  # the inference thread only runs queued work; this keeps pending honest
            if idle:
                return self._run_inline(feeds, timeout_s)
        first = next(iter(feeds.values()))
        n = int(first.shape[0]) if first.ndim else 1
        key = tuple((k, v.dtype.str, v.shape[1:]) for k, v in sorted(feeds.items())) if self.enabled else ()
        item = _Pending(feeds, n, key, loop.create_future())
        with self._cond:
            self._queue.append(item)
            self._cond.notify()
        # A plain timer instead of asyncio.wait_for(shield(...)): no extra task or future layers per request.
        timer = loop.call_later(timeout_s, self._expire, item, timeout_s)
        try:
            return await item.future
        finally:
            timer.cancel()

    def _run_inline(self, feeds: Feeds, timeout_s: float) -> tuple[dict[str, np.ndarray], Timing]:
        start = time.perf_counter()
        try:
            outputs, rec = self._execute([feeds])
        finally:
            with self._cond:
                self._executing = 0
                if self._queue:  # queued from another thread meanwhile: the inference thread takes it now
                    self._cond.notify()
        rec.requests = 1
        if self._on_batch is not None:
            self._on_batch(rec)
        if time.perf_counter() - start > timeout_s:  # answered as a queued request would have been
            raise self._timeout(timeout_s, "compute")
        return outputs[0], rec.timing(queue_ns=0)

    def _expire(self, item: _Pending, timeout_s: float) -> None:
        # Still queued: take it out so the model never runs it. Already running: its result is dropped.
        with self._cond:
            try:
                self._queue.remove(item)
            except ValueError:
                pass
        if not item.future.done():
            item.future.set_exception(self._timeout(timeout_s, "queue + compute"))

    def _timeout(self, timeout_s: float, spent_on: str) -> RequestTimeoutError:
        return RequestTimeoutError(
            f"model '{self._name}' did not answer within {timeout_s:g} s ({spent_on}); "
            "retry, send smaller batches, or raise the server's request timeout"
        )

    # -- inference thread --------------------------------------------------------------------------------------
    def _select(self) -> list[_Pending]:
        """The oldest request plus later ones of the same per-item shape that fit in ``max_batch``, in order."""
        head = self._queue[0]
        if not self.enabled or len(self._queue) == 1:
            return [head]
        chosen, total = [head], head.n
        for item in list(self._queue)[1:]:
            if total >= self.max_batch:
                break
            if item.key == head.key and total + item.n <= self.max_batch:
                chosen.append(item)
                total += item.n
        return chosen

    def _wait_left(self, chosen: list[_Pending]) -> float:
        """Seconds the batch may still wait for more requests; 0 when it should run now."""
        if not self.enabled or self._closing or self.delay_s <= 0:
            return 0.0
        total = sum(p.n for p in chosen)
        if total >= self.max_batch or total in self.preferred or (self.preferred and total > self.preferred[-1]):
            return 0.0
        return self.delay_s - (time.perf_counter_ns() - chosen[0].enqueued_ns) / 1e9

    def _next_batch(self) -> list[_Pending] | None:
        """Block until a batch is due and take it off the queue; None once closing with an empty queue."""
        with self._cond:
            while True:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return None
                chosen = self._select()
                left = self._wait_left(chosen)
                if left <= 0:
                    break
                self._cond.wait(left)  # a new request or close() wakes us early; then look again
            if len(chosen) == 1:
                self._queue.popleft()
            else:
                for p in chosen:
                    self._queue.remove(p)
            self._executing = len(chosen)
            return chosen

    def _serve(self) -> None:
        try:
            if self._cpus:
                try:
                    os.sched_setaffinity(0, self._cpus)  # 0 = this thread (Linux affinity is per thread)
                except OSError as exc:  # the repository already pinned its loading thread there; should not happen
                    log.warning("inference thread of '%s' not pinned to CPUs %s: %s", self._name, self._cpus, exc)
            while True:
                chosen = self._next_batch()
                if chosen is None:
                    return
                # Callers that timed out or went away are skipped (reading done() from here is a benign race:
                # at worst a batch computes a result nobody collects).
                chosen = [p for p in chosen if not p.future.done()]
                if not chosen:
                    self._executing = 0
                    continue
                start_ns = time.perf_counter_ns()
                try:
                    outputs, rec = self._execute([p.feeds for p in chosen])
                except Exception as exc:  # the model failed: every caller in the batch gets the error
                    self._executing = 0
                    self._call_soon(_deliver, chosen, [], exc)
                    continue
                rec.requests = len(chosen)
                results = [(out, rec.timing(start_ns - p.enqueued_ns)) for p, out in zip(chosen, outputs)]
                self._executing = 0
                self._call_soon(self._finish, chosen, results, rec)
        finally:
            self._call_soon(self._mark_stopped)

    def _mark_stopped(self) -> None:
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)

    def _finish(self, chosen: list[_Pending], results: list[Any], rec: BatchRecord) -> None:
        _deliver(chosen, results, None)
        if self._on_batch is not None:
            self._on_batch(rec)

    def _call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)  # type: ignore[union-attr]
        except RuntimeError:  # the loop is closed (process exit): nobody is waiting any more
            pass

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
