"""The request queue between the HTTP handlers and the ensemble.

Every job goes through **one worker thread** that owns the ensemble.  The worker never
touches a socket.  It hands each step to the job's own ``asyncio.Queue`` on the event loop
(``call_soon_threadsafe``), so a client that reads slowly only delays its own bytes, never
the worker.  A job whose client went away is marked cancelled; the worker drops it between
steps and goes on.

How jobs share the ensemble is the :class:`Runner`'s business.  The one runner,
:class:`EngineRunner`, feeds them to the engine's decode loop as rows:

* ``--max-batch 1``: one job at a time, row by row.  Each answer is what ``unite generate``
  gives for the prompt (a function of the prompt alone).
* ``--max-batch N`` (members that decode several sequences in one pass: llama.cpp with
  ``n_seq``, transformers): **continuous batching**.  Between two steps the runner admits
  waiting jobs into the running batch (up to ``max_batch`` rows), so a request starts
  streaming when it joins, not when those ahead of it finish.  A finished or cancelled row
  leaves without disturbing the others.  Batched kernels round differently, so an answer can
  differ in a near-tie from the serial one (and from itself in another batch):
  ``--max-batch 1`` where that matters.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..engine import Ensemble, StreamChunk, drive
from ..methods.base import ResponseMethod
from ..prompts import Prompt
from ..sampling import GenerationConfig
from ..sync import TokenTrack

log = logging.getLogger("unite_llm.server")


class OverloadedError(Exception):
    """The waiting queue is full (HTTP 503)."""


@dataclass(frozen=True)
class ChunkEvent:
    """A step of the job's stream (the last one carries the output)."""

    chunk: StreamChunk


@dataclass(frozen=True)
class DoneEvent:
    """The job finished; no event follows."""


@dataclass(frozen=True)
class ErrorEvent:
    """The job failed with ``error``; no event follows."""

    error: BaseException


JobEvent = ChunkEvent | DoneEvent | ErrorEvent
"""What the worker hands a job's client: chunks, then one :class:`DoneEvent` or :class:`ErrorEvent`."""


@dataclass(eq=False)
class Job:
    """One generation request on its way through the worker."""

    prompt: Prompt
    chat: bool
    config: GenerationConfig
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[JobEvent] = field(default_factory=asyncio.Queue)
    """Filled by the worker: :class:`ChunkEvent`... then :class:`DoneEvent` or :class:`ErrorEvent`."""
    cancelled: threading.Event = field(default_factory=threading.Event)
    enqueued: float = field(default_factory=time.perf_counter)
    started: float | None = None

    def cancel(self) -> None:
        self.cancelled.set()

    def emit(self, event: JobEvent) -> None:
        """Called from the worker thread: never blocks on the client."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop is closed: the server is shutting down
            self.cancel()


class JobSource(Protocol):
    """What a runner sees of the scheduler."""

    def take(self, n: int) -> list[Job]:
        """Up to ``n`` waiting jobs, now (possibly none): they are running from here on."""
        ...

    def finish(self, job: Job, error: BaseException | None = None) -> None:
        """``job`` is over: done, or failed with ``error`` (cancelled jobs are counted as such)."""
        ...


class Runner(Protocol):
    """Runs jobs on the worker thread, starting with ``jobs`` and taking more while it runs."""

    max_batch: int

    def run(self, jobs: Sequence[Job], source: JobSource) -> None: ...


class EngineRunner:
    """The jobs as rows of the engine's one decode loop (:func:`~unite_llm.engine.drive`).

    With ``max_batch > 1`` (capped by what the members decode at once) this is **continuous
    batching**: between two steps waiting jobs join the running batch, so a request starts
    streaming when it joins, not when those ahead of it finish.  With 1 the same loop runs
    one job at a time, row by row (each answer then is ``unite generate``'s for the prompt).
    A job whose prompt a member refuses fails alone; an error in a step fails the rows of
    that step.  A method that answers whole prompts (``rank``) is handed one job at a time.
    """

    def __init__(self, ensemble: Ensemble, max_batch: int = 1) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.ensemble = ensemble
        self.max_batch = min(max_batch, ensemble.max_batch)
        self.tokens = 0  # ensemble steps made (tokens/s in /health)
        self.batch_size = 0  # rows in the last step

    def run(self, jobs: Sequence[Job], source: JobSource) -> None:
        ens = self.ensemble
        if isinstance(ens.method, ResponseMethod):
            self._answer_whole(jobs, source)
            return
        with ens.exclusive():
            feed = _JobFeed(ens, list(jobs), source)
            try:  # an error escaping a step fails every running job (Scheduler._work)
                for results in drive(ens.engine, feed, size=self.max_batch, batched=self.max_batch > 1, joins=True):
                    self.batch_size = len({id(job) for job, _ in results})
                    self.tokens += len({id(job) for job, chunk in results if chunk.step is not None})
                    for job, chunk in results:
                        if not job.cancelled.is_set():
                            job.emit(ChunkEvent(chunk))
                        if chunk.output is not None:
                            source.finish(job)
            finally:
                self.batch_size = 0

    def _answer_whole(self, jobs: Sequence[Job], source: JobSource) -> None:
        for job in jobs:
            try:
                out = self.ensemble.generate(job.prompt, job.config, chat=job.chat)
            except Exception as err:  # this job's error: the next one runs
                if not _is_user_error(err):
                    log.exception("generation failed")
                source.finish(job, err)
                continue
            if not job.cancelled.is_set():
                job.emit(ChunkEvent(StreamChunk(out.text, out.steps[-1] if out.steps else None, out)))
            source.finish(job)


class _JobFeed:
    """The scheduler's jobs as the decode loop's rows (:class:`~unite_llm.engine.RowFeed`)."""

    def __init__(self, ensemble: Ensemble, pending: list[Job], source: JobSource) -> None:
        self.ensemble = ensemble
        self.pending = pending
        self.source = source

    def take(self, free: int) -> list[tuple[Job, list[TokenTrack], GenerationConfig]]:
        jobs, self.pending = self.pending[:free], self.pending[free:]
        jobs += self.source.take(free - len(jobs))
        rows = []
        for job in jobs:
            if job.cancelled.is_set():
                self.source.finish(job)
                continue
            try:
                tracks = self.ensemble.start_tracks(job.prompt, chat=job.chat)
            except Exception as err:  # this prompt's problem (too long, no chat template, ...)
                self.refused(job, err)
                continue
            rows.append((job, tracks, job.config))
        return rows

    def refused(self, job: Job, error: Exception) -> None:
        if not _is_user_error(error):
            log.exception("request refused")
        self.source.finish(job, error)

    def cancelled(self, job: Job) -> bool:
        if not job.cancelled.is_set():
            return False
        log.info("request cancelled by its client; its row leaves the batch")
        self.source.finish(job)
        return True


@dataclass
class Stats:
    completed: int = 0
    cancelled: int = 0
    failed: int = 0
    rejected: int = 0


class Scheduler:
    """A bounded queue of jobs and the one worker thread that serves it."""

    def __init__(self, runner: Runner, *, max_queue: int = 64) -> None:
        if max_queue < 1:
            raise ValueError("max_queue must be >= 1")
        self.runner = runner
        self.max_queue = max_queue
        self.stats = Stats()
        self._waiting: collections.deque[Job] = collections.deque()
        self._running: list[Job] = []
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._rate_mark = (time.perf_counter(), 0)

    # -- life cycle -----------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._stop = False
            self._thread = threading.Thread(target=self._work, name="unite-worker", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Cancel everything and wait for the worker to finish its current step."""
        with self._cond:
            self._stop = True
            for job in [*self._waiting, *self._running]:
                job.cancel()
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    # -- the handlers' side ---------------------------------------------------------

    def submit(self, prompt: Prompt, config: GenerationConfig, *, chat: bool) -> Job:
        """Queue a job, or raise :class:`OverloadedError` when ``max_queue`` jobs already wait."""
        return self.submit_all([prompt], config, chat=chat)[0]

    def submit_all(self, prompts: Sequence[Prompt], config: GenerationConfig, *, chat: bool) -> list[Job]:
        """Queue one job per prompt, all or none: :class:`OverloadedError` when they do not all
        fit beside the jobs already waiting (nothing is queued then).  A request with more
        prompts than ``max_queue`` could never fit: callers refuse it first (a 400, not a 503
        that a client would retry forever)."""
        loop = asyncio.get_running_loop()
        jobs = [Job(p, chat, config, loop) for p in prompts]
        with self._cond:
            self._waiting = collections.deque(j for j in self._waiting if not j.cancelled.is_set())
            if self._stop:
                raise OverloadedError("the server is shutting down")
            if len(self._waiting) + len(jobs) > self.max_queue:
                self.stats.rejected += 1
                raise OverloadedError(f"the server is overloaded: {len(self._waiting)} requests are already waiting")
            self._waiting.extend(jobs)
            self._cond.notify()
        return jobs

    def snapshot(self) -> dict[str, Any]:
        with self._cond:
            waiting = sum(not j.cancelled.is_set() for j in self._waiting)
            return {
                "waiting": waiting,
                "running": len(self._running),
                "max_queue": self.max_queue,
                "max_batch": self.runner.max_batch,
                **self.stats.__dict__,
                **self.runner_stats(),
            }

    def runner_stats(self) -> dict[str, Any]:
        """Batch size now and tokens/s over the last window (runners that count them)."""
        tokens = getattr(self.runner, "tokens", None)
        if tokens is None:
            return {}
        now = time.perf_counter()
        t0, n0 = self._rate_mark
        rate = (tokens - n0) / (now - t0) if now > t0 else 0.0
        if now - t0 > 10.0:  # a sliding mark: the rate is over the last 10-20 s
            self._rate_mark = (now, tokens)
        return {"batch_size": getattr(self.runner, "batch_size", 0), "tokens": tokens, "tokens_per_s": round(rate, 2)}

    # -- the worker -----------------------------------------------------------------

    def _take(self) -> list[Job] | None:
        """Wait for work: the first waiting jobs (up to ``max_batch``), or None at shutdown."""
        with self._cond:
            while True:
                self._drop_cancelled()
                if self._stop:
                    return None
                if self._waiting:
                    return self._start(max(1, self.runner.max_batch))
                self._cond.wait()

    def _drop_cancelled(self) -> None:
        while self._waiting and self._waiting[0].cancelled.is_set():
            self._waiting.popleft()
            self.stats.cancelled += 1

    def _start(self, n: int) -> list[Job]:
        now = time.perf_counter()
        batch: list[Job] = []
        while self._waiting and len(batch) < n:
            job = self._waiting.popleft()
            if job.cancelled.is_set():
                self.stats.cancelled += 1
                continue
            job.started = now
            batch.append(job)
        self._running += batch
        return batch

    def take(self, n: int) -> list[Job]:
        """For the runner: up to ``n`` waiting jobs without waiting (none once stopping)."""
        if n <= 0:
            return []
        with self._cond:
            if self._stop:
                return []
            return self._start(n)

    def finish(self, job: Job, error: BaseException | None = None) -> None:
        """For the runner: ``job`` is over (its client hears "done" or the error)."""
        with self._cond:
            if job in self._running:
                self._running.remove(job)
            if job.cancelled.is_set():
                self.stats.cancelled += 1
            elif error is not None:
                self.stats.failed += 1
                job.emit(ErrorEvent(error))
            else:
                self.stats.completed += 1
                job.emit(DoneEvent())

    def _work(self) -> None:
        while (batch := self._take()) is not None:
            try:
                self.runner.run(batch, self)  # inside the ensemble's turn (Ensemble.exclusive)
            except Exception as err:  # a bug, or a user error found late: report it to every running job
                if not _is_user_error(err):
                    log.exception("generation failed")
                with self._cond:
                    running = list(self._running)
                for job in running:
                    self.finish(job, err)


def _is_user_error(err: BaseException) -> bool:
    from ..errors import UniteError

    return isinstance(err, UniteError)
