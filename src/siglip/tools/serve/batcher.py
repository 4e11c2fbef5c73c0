"""Dynamic batching: items submitted by concurrent requests are gathered into one call of a batch function.

    batcher = Batcher(lambda texts: embedder.embed_texts(texts), executor, max_batch_size=32)
    batcher.start()
    vectors = await batcher.submit(["a cat", "a dog"])   # one result per item, in order

A worker task takes the first waiting item, gathers more, and runs the batch function on `executor` (a
thread, so the event loop keeps accepting requests while the model runs); one batch runs at a time, so items
that arrive while a batch runs wait for the next one, and under load batches fill without any timer. How long
the worker gathers after the first item:

- `max_wait_s=None` (the default, adaptive): while requests keep arriving. It takes what is queued and yields
  to the event loop, and dispatches once `QUIET_TURNS` turns of the loop in a row brought no new item (the
  requests parsed in the same burst are in), `max_batch_size` items are in, or `ADAPTIVE_CAP_S` has passed.
  A lone request is dispatched at once (no fixed wait on its latency), and requests that come back together
  after a batch (the clients it answered) go together into the next one. One more hold, for a slow model:
  the gathering lasts at least `MODEL_SHARE` of the previous batch's run time. The clients a batch answered
  take a few milliseconds to come back, more than a few loop turns; without the hold, the items that queued
  while it ran go off without them, and the clients stay split in two groups whose batches alternate (at 8
  clients on a base-size model, batches of 4). With it, they come back into the next batch, at a cost of
  that share of the model's time; for a small model (milliseconds a batch) the hold is a fraction of a
  millisecond, and the alternating batches overlap the request path with the model.
- `max_wait_s=S`: until `max_batch_size` items are in or S seconds have passed since the first (the
  max-batch-size / max-queue-delay scheme of Triton, TorchServe and LitServe).

The queue is bounded: a submit that does not fit raises `QueueFull` at once rather than waiting. A submit
that is not answered within `timeout_s` raises `Timeout`, and its items are dropped from any batch not yet
started. `stop()` refuses new items, lets every queued one be answered, then ends the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")
QUIET_TURNS = 2  # adaptive gathering: event-loop turns without a new item before a batch is dispatched
ADAPTIVE_CAP_S = 0.005  # adaptive gathering: at most this long after the first item (or the hold below)
MODEL_SHARE = 0.05  # adaptive gathering: at least this share of the previous batch's run time


async def wait_until(awaitable: Awaitable[T], deadline: float) -> T:
    """`await awaitable`, cancelled with the built-in `TimeoutError` at `deadline` (the running loop's clock).

    From Python 3.11.3 a timer on the running task (`asyncio.timeout_at`; 3.11.3 fixed how it counts earlier
    cancellations, gh-102780): `asyncio.wait_for` there wraps a coroutine in a task of its own, one more task
    and loop turn for every request's body, batch and answer.
    """
    if sys.version_info >= (3, 11, 3):
        async with asyncio.timeout_at(deadline):
            return await awaitable
    try:  # before: on Python 3.10 asyncio's TimeoutError is not yet the built-in one
        return await asyncio.wait_for(awaitable, max(0.0, deadline - asyncio.get_running_loop().time()))
    except asyncio.TimeoutError:
        raise TimeoutError from None


class QueueFull(RuntimeError):
    """The batcher's queue cannot take the items now (or it is shutting down); try again later."""


class Timeout(RuntimeError):
    """The items were not answered in time."""


@dataclass
class _Pending(Generic[T, R]):
    item: T
    future: asyncio.Future[R]


class Batcher(Generic[T, R]):
    """Gathers items from concurrent `submit` calls into calls of `run_batch` (see the module doc).

    `run_batch` takes a list of items and returns one result per item, in order; an exception it raises is
    the result of every item of that batch. `on_batch(size, seconds)` is told of every batch run. `max_wait_s`
    None gathers adaptively, a number of seconds gathers for a fixed time (see the module doc).
    """

    def __init__(
        self,
        run_batch: Callable[[list[T]], Sequence[R]],
        executor: Executor,
        max_batch_size: int = 32,
        max_wait_s: float | None = None,
        max_queue: int = 256,
        timeout_s: float = 30.0,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        if max_batch_size < 1 or max_queue < 1:
            raise ValueError(
                f"max_batch_size and max_queue must be at least 1, got {max_batch_size}, {max_queue}"
            )
        if (max_wait_s is not None and max_wait_s < 0) or timeout_s <= 0:
            raise ValueError(f"max_wait_s must be >= 0 and timeout_s > 0, got {max_wait_s}, {timeout_s}")
        self.run_batch = run_batch
        self.executor = executor
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.timeout_s = timeout_s
        self.on_batch = on_batch
        self._queue: asyncio.Queue[_Pending[T, R]] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._closing = False
        self._last_run_s = 0.0  # the previous batch's run time (adaptive gathering's hold)

    @property
    def depth(self) -> int:
        """Items waiting for a batch."""
        return self._queue.qsize() if self._queue is not None else 0

    def start(self) -> None:
        """Start the worker on the running event loop."""
        self._queue = asyncio.Queue()
        self._closing = False
        self._worker = asyncio.get_running_loop().create_task(self._work())

    async def submit(self, items: Sequence[T]) -> list[R]:
        """The results of `items` (one per item, in order), computed in batches with other callers' items.

        Raises `QueueFull` when the queue has no room for all of them (or the batcher is stopping), `Timeout`
        when they are not answered within `timeout_s`, and whatever `run_batch` raised for their batch.
        """
        if self._queue is None or self._worker is None or self._worker.done() or self._closing:
            raise QueueFull("the server is shutting down")
        if self._queue.qsize() + len(items) > self.max_queue:
            raise QueueFull(f"the queue is full ({self.max_queue} items waiting)")
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        for item, future in zip(items, futures, strict=True):
            self._queue.put_nowait(_Pending(item, future))
        answers = futures[0] if len(futures) == 1 else asyncio.gather(*futures)
        try:
            await wait_until(answers, loop.time() + self.timeout_s)
        except TimeoutError:
            answered = all(future.done() and not future.cancelled() for future in futures)
            if not answered:  # else answered in the loop turn the deadline passed: the answer stands
                raise Timeout(f"no answer within {self.timeout_s:g} s") from None
        return [future.result() for future in futures]

    async def stop(self) -> None:
        """Refuse new items, answer the queued ones, then end the worker."""
        self._closing = True
        if self._queue is None or self._worker is None:
            return
        await self._queue.join()
        self._worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._worker

    async def _work(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            if self.max_wait_s is None:
                await self._gather_adaptively(loop, batch)
            else:
                await self._gather_for(loop, batch, self.max_wait_s)
            live = [p for p in batch if not p.future.done()]  # timed-out callers are gone
            if live:
                await self._run(loop, live)
            for _ in batch:
                self._queue.task_done()

    async def _gather_adaptively(self, loop: asyncio.AbstractEventLoop, batch: list[_Pending[T, R]]) -> None:
        assert self._queue is not None
        hold = loop.time() + MODEL_SHARE * self._last_run_s
        deadline = max(loop.time() + ADAPTIVE_CAP_S, hold)
        quiet = 0
        while len(batch) < self.max_batch_size and quiet < QUIET_TURNS and loop.time() < deadline:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                quiet = 0
            elif hold > loop.time():  # the hold: wait for the next item, without counting turns
                with contextlib.suppress(TimeoutError):
                    batch.append(await wait_until(self._queue.get(), hold))
            else:
                await asyncio.sleep(0)  # one turn of the loop: requests already read reach `submit`
                quiet += 1

    async def _gather_for(
        self, loop: asyncio.AbstractEventLoop, batch: list[_Pending[T, R]], wait_s: float
    ) -> None:
        assert self._queue is not None
        deadline = loop.time() + wait_s
        while len(batch) < self.max_batch_size:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            if deadline <= loop.time():
                return
            try:
                batch.append(await wait_until(self._queue.get(), deadline))
            except TimeoutError:
                return

    async def _run(self, loop: asyncio.AbstractEventLoop, batch: list[_Pending[T, R]]) -> None:
        start = loop.time()
        try:
            results = await loop.run_in_executor(self.executor, self.run_batch, [p.item for p in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"the batch function gave {len(results)} results for {len(batch)} items")
        except Exception as err:
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(err)
        else:
            for pending, result in zip(batch, results, strict=True):
                if not pending.future.done():
                    pending.future.set_result(result)
        self._last_run_s = loop.time() - start
        if self.on_batch is not None:
            self.on_batch(len(batch), self._last_run_s)
