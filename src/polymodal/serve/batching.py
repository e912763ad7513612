"""Dynamic batching: concurrent requests that can share a forward pass are run as one batch.

Requests go into an asyncio queue; one worker task takes the oldest request, adds every waiting
request with the same key (same model, same decoding settings) up to `max_batch`, waits at most
`max_wait_ms` for more when more are on their way or expected (a lone client never waits), and
runs the whole group in the model thread. Requests with another key
wait for the next round, in arrival order. On a CPU, beam search over 8 images in one batch costs
little more than over one (bench/serve.py), so throughput under load grows with the batch.

Continuous batching (Orca, Yu et al. 2022; vLLM), `serve --continuous`: when `open_session(key)`
gives a `Session`, the group is decoded step by step in the model thread; between two steps the
requests that have arrived meanwhile join it (up to `max_batch` in the batch), and each request is
answered as soon as its own search ends. No request waits for a batch to finish, and the model
thread does not sit idle while the next batch forms; but every admission costs a prefill of few
images and a merge of the batch state, which on a CPU outweighs that (docs/benchmarks.md, "serve"),
so whole batches are the default.

Example:
    >>> import asyncio
    >>> from concurrent.futures import ThreadPoolExecutor
    >>> async def demo():
    ...     batcher = DynamicBatcher(lambda key, items: [x * 2 for x in items], ThreadPoolExecutor(1))
    ...     batcher.start()
    ...     results = await asyncio.gather(*(batcher.submit("double", x) for x in range(3)))
    ...     await batcher.stop()
    ...     return [r for r, _ in results]
    >>> asyncio.run(demo())
    [0, 2, 4]
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import PolymodalError

RunBatch = Callable[[Hashable, list[Any]], Sequence[Any]]


class Session(Protocol):
    """A batch decoded step by step that requests can join between steps (`engines.CaptionSession`)."""

    def add(self, items: list[Any], keys: list[Hashable]) -> None: ...
    def advance(self) -> list[tuple[Hashable, Any]]: ...  # (key, result) of the items that ended
    def __len__(self) -> int: ...


OpenSession = Callable[[Hashable], Session | None]
PEAK_WINDOW_S = 1.0  # how long the batcher remembers how many clients were sending at once
SLICE_S = 0.05  # a continuous batch hands the model thread back this often (VQA, chat, other keys)


class ServerBusy(PolymodalError):
    """Too many requests are waiting; the client should retry later (HTTP 503)."""

    status = 503


@dataclass(eq=False)  # jobs are compared by identity: `==` on their tensor items would raise
class _Job:
    key: Hashable
    item: Any
    future: asyncio.Future = field(repr=False)
    queued_at: float = field(default_factory=time.perf_counter)


@dataclass
class BatchStats:
    batches: int = 0        # model calls: whole batches, or steps of a continuous batch
    items: int = 0          # requests in those calls, summed over the calls
    requests: int = 0       # requests answered
    largest: int = 0
    busy_seconds: float = 0.0  # time spent in the model thread: how busy it is

    def record(self, size: int, answered: int, seconds: float) -> None:
        self.batches, self.items, self.requests = self.batches + 1, self.items + size, self.requests + answered
        self.largest, self.busy_seconds = max(self.largest, size), self.busy_seconds + seconds

    def as_dict(self) -> dict[str, float]:
        mean = self.items / self.batches if self.batches else 0.0
        return {"batches": self.batches, "requests": self.requests, "mean_batch": round(mean, 2),
                "largest_batch": self.largest, "busy_seconds": round(self.busy_seconds, 3)}


class DynamicBatcher:
    """Group concurrent `submit(key, item)` calls into `run_batch(key, items)` calls.

    Args:
        run_batch: called in `executor` with a key and up to `max_batch` items of that key; returns
            one result per item, in order.
        executor: where the batches run (one thread: the model is used by one batch at a time).
        max_batch: the most items per call; 1 turns batching off.
        max_wait_ms: how long the worker waits for more items once it has one.
        max_queue: waiting items beyond which `submit` raises `ServerBusy` instead of queueing.
        open_session: continuous batching for the keys it gives a `Session` for (None: whole batches).
    """

    def __init__(self, run_batch: RunBatch, executor: Executor, max_batch: int = 8, max_wait_ms: float = 5.0,
                 max_queue: int = 256, open_session: OpenSession | None = None):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.run_batch, self.executor, self.open_session = run_batch, executor, open_session
        self.max_batch, self.max_wait, self.max_queue = max_batch, max_wait_ms / 1000.0, max_queue
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Job] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._held: list[_Job] = []  # taken from the queue, not yet in a batch (another key, or no room)
        # Continuous batching: requests for the running batch's key, taken by the model thread between
        # steps (a deque: appends and pops are atomic across threads); requests of other keys stop that.
        self._joining: collections.deque[_Job] = collections.deque()
        self._session_key: Hashable | None = None
        self._others_waiting = False
        self._worker: asyncio.Task | None = None
        self.incoming = 0  # requests announced (being read or decoded) but not yet submitted
        self.waiting = 0   # requests submitted and not yet answered
        self._peak, self._peak_at = 0, 0.0  # most requests in flight at once, lately (see _expected)

    def start(self) -> None:
        """Start the worker on the running event loop (app startup; `submit` starts it if need be).

        A restart on the same loop keeps the queue, so that requests already waiting are served.
        """
        loop = asyncio.get_running_loop()
        if self._queue is None or self._loop is not loop:
            self._queue, self._loop = asyncio.Queue(), loop
        self._worker = loop.create_task(self._work(), name="polymodal-batcher")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        for job in [*self._held, *self._joining]:
            if not job.future.done():
                job.future.cancel()
        self._held.clear()
        self._joining.clear()

    @property
    def running(self) -> bool:
        return self._worker is not None and not self._worker.done()

    @property
    def pending(self) -> int:
        return (self._queue.qsize() if self._queue else 0) + len(self._held) + len(self._joining)

    @contextlib.contextmanager
    def announce(self) -> Iterator[None]:
        """Mark a request as on its way (reading, decoding) so that a forming batch waits for it.

        Without announcements the worker never waits, so a lone client pays no batching delay; with
        them it waits up to `max_wait_ms` only while requests it knows of are still being prepared.
        """
        self.incoming += 1
        self._note_load()
        try:
            yield
        finally:
            self.incoming -= 1

    def _note_load(self) -> None:
        now, in_flight = time.monotonic(), self.incoming + self.waiting
        if in_flight >= self._peak or now - self._peak_at > PEAK_WINDOW_S:
            self._peak, self._peak_at = in_flight, now

    def _expected(self) -> int:
        """How many requests a batch can expect: the most in flight at once within the last second.

        Clients that send one request after another are briefly absent between two requests; the
        recent peak remembers them, so a batch waits (up to max_wait_ms) for their next request
        instead of running half full. A lone client has a peak of 1 and never waits.
        """
        recent = time.monotonic() - self._peak_at <= PEAK_WINDOW_S
        return max(self._peak if recent else 0, self.incoming + self.waiting)

    async def submit(self, key: Hashable, item: Any) -> tuple[Any, int]:
        """Queue one item and wait for its result; returns (result, size of the batch it ran in).

        Raises:
            ServerBusy: `max_queue` items are already waiting.
        """
        if not self.running:  # e.g. an app used without its lifespan (a TestClient outside `with`)
            self.start()
        if self.pending >= self.max_queue:
            raise ServerBusy(f"server busy: {self.pending} requests are waiting; retry in a moment")
        job = _Job(key, item, asyncio.get_running_loop().create_future())
        if self._session_key is not None and key == self._session_key and not self._others_waiting:
            self._joining.append(job)  # the running continuous batch takes it between two steps
        else:
            if self._session_key is not None:
                self._others_waiting = True  # the running batch takes no more; this one goes next
            self._queue.put_nowait(job)
        future = job.future
        self.waiting += 1
        self._note_load()
        try:
            return await future
        finally:
            self.waiting -= 1

    async def _next_batch(self) -> list[_Job]:
        assert self._queue is not None
        first = self._held.pop(0) if self._held else await self._queue.get()
        batch = [first] + [j for j in self._held if j.key == first.key][: self.max_batch - 1]
        self._held = [j for j in self._held if j not in batch]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        while len(batch) < self.max_batch:
            if self._queue.empty():
                # Requests that arrived while the last batch ran are already here; wait for more
                # only while some are on their way (`announce`) or expected from recent load.
                remaining = deadline - loop.time()
                if remaining <= 0 or (self.incoming <= 0 and len(batch) >= self._expected()):
                    break
                try:
                    job = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            else:
                job = self._queue.get_nowait()
            (batch if job.key == first.key else self._held).append(job)
        return batch

    async def _work(self) -> None:
        while True:
            batch = [job for job in await self._next_batch() if not job.future.done()]  # drop timed-out ones
            if not batch:
                continue
            session = self.open_session(batch[0].key) if self.open_session and self.max_batch > 1 else None
            if session is None:
                await self._run_whole(batch)
            else:
                await self._run_continuous(session, batch)

    async def _run_whole(self, batch: list[_Job]) -> None:
        started = time.perf_counter()
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self.executor, self.run_batch, batch[0].key, [job.item for job in batch])
        except Exception as err:  # noqa: BLE001 - handed to every waiting request, not swallowed
            self._fail(batch, err)
            return
        self.stats.record(len(batch), len(batch), time.perf_counter() - started)
        for job, result in zip(batch, results, strict=True):
            if not job.future.done():
                job.future.set_result((result, len(batch)))

    async def _run_continuous(self, session: Session, batch: list[_Job]) -> None:
        """Decode `batch` step by step in the model thread, in slices of `SLICE_S`; requests of the same key
        join it between two steps (`submit` hands them over in `_joining`) while none of another key waits."""
        loop, key = asyncio.get_running_loop(), batch[0].key
        while not self._queue.empty():
            self._held.append(self._queue.get_nowait())
        self._others_waiting = any(j.key != key for j in self._held)
        if not self._others_waiting:  # same-key requests beyond the first batch join as room frees up
            batch, self._held = batch + self._held, []
        self._joining.extend(batch)
        self._session_key = key
        peak: dict[_Job, int] = {}  # each request in the batch: the most requests decoded alongside it
        try:
            while len(session) or (self._joining and not self._others_waiting):
                await loop.run_in_executor(self.executor, self._slice, session, peak)
        except Exception as err:  # noqa: BLE001 - handed to every request in the batch, not swallowed
            self._fail(list(peak), err)
        finally:
            self._session_key = None
            self._held += [j for j in self._joining if not j.future.done()]  # no room for them: next batch
            self._joining.clear()

    def _slice(self, session: Session, peak: dict[_Job, int]) -> None:
        """In the model thread: admit waiting requests, step, answer those that ended; for `SLICE_S`
        at most, so that other work (VQA, chat, other keys) gets the thread in turn."""
        end = time.perf_counter() + SLICE_S
        while True:
            started = time.perf_counter()
            joining = self._admit(len(session))
            if joining:
                peak.update((job, 0) for job in joining)  # from here on, an error reaches them too
                session.add([job.item for job in joining], joining)
            if not len(session):
                return
            ended = session.advance()
            size = len(session) + len(ended)
            for job in peak:
                peak[job] = max(peak[job], size)
            self.stats.record(size, len(ended), time.perf_counter() - started)
            if ended:  # one wake-up of the event loop per step, not per request
                self._loop.call_soon_threadsafe(_answer, [(job, result, peak.pop(job)) for job, result in ended])
            if time.perf_counter() >= end:
                return

    def _admit(self, live: int) -> list[_Job]:
        """The waiting requests that join now. Each admission costs a prefill and a merge of the batch
        state, so while the batch is at least half full, requests join in groups: once they would fill
        it, or once the oldest has waited `max_wait_ms`."""
        while self._joining and self._joining[0].future.done():  # timed out while waiting
            self._joining.popleft()
        # list() copies the deque in one step; iterating it here could meet an append from the event loop
        waiting = [job for job in list(self._joining) if not job.future.done()]
        room = self.max_batch - live
        if not waiting or room <= 0 or self._others_waiting:
            return []
        if len(waiting) < room and live >= self.max_batch // 2 and \
                time.perf_counter() - waiting[0].queued_at < self.max_wait:
            return []
        joining = []
        while self._joining and len(joining) < room:
            job = self._joining.popleft()
            if not job.future.done():  # timed out while waiting
                joining.append(job)
        return joining

    @staticmethod
    def _fail(jobs: list[_Job], err: Exception) -> None:
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(err)


def _answer(answers: list[tuple[_Job, Any, int]]) -> None:
    for job, result, batch_size in answers:
        if not job.future.done():
            job.future.set_result((result, batch_size))
