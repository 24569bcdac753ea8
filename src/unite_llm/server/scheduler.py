"""The request queue between the HTTP handlers and the ensemble.

A llama.cpp member holds one KV cache, so two generations cannot interleave on it:
every job goes through **one worker thread** that drives ``Ensemble.stream``.  The
worker never touches a socket.  It hands each step to the job's own ``asyncio.Queue``
on the event loop (``call_soon_threadsafe``), so a client that reads slowly only
delays its own bytes, never the worker.  A job whose client went away is marked
cancelled; the worker checks between steps, closes the generator and moves on.

Batching plugs in through :class:`Runner`: the worker takes up to ``runner.max_batch``
waiting jobs at once and hands them to ``runner.run``.  :class:`SerialRunner`
(``max_batch = 1``) is what llama.cpp members need.  A backend that scores several
contexts in one forward pass (e.g. an ensemble with ``stream_batch``) only needs a
runner that interleaves its jobs' steps; the queue, cancellation and the handlers stay
as they are.
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

from ..engine import Ensemble
from ..prompts import Prompt
from ..sampling import GenerationConfig

log = logging.getLogger("unite_llm.server")


class OverloadedError(Exception):
    """The waiting queue is full (HTTP 503)."""


@dataclass(eq=False)
class Job:
    """One generation request on its way through the worker."""

    prompt: Prompt
    chat: bool
    config: GenerationConfig
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    """Filled by the worker: ``("chunk", StreamChunk)``... then ``("done", None)`` or ``("error", exc)``."""
    cancelled: threading.Event = field(default_factory=threading.Event)
    enqueued: float = field(default_factory=time.perf_counter)
    started: float | None = None

    def cancel(self) -> None:
        self.cancelled.set()

    def emit(self, kind: str, payload: Any) -> None:
        """Called from the worker thread: never blocks on the client."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, payload))
        except RuntimeError:  # the event loop is closed: the server is shutting down
            self.cancel()


class Runner(Protocol):
    """Runs a batch of jobs to completion (or cancellation) on the worker thread."""

    max_batch: int

    def run(self, jobs: Sequence[Job]) -> None: ...


class SerialRunner:
    """One job at a time through ``Ensemble.stream`` (members with a single KV cache)."""

    max_batch = 1

    def __init__(self, ensemble: Ensemble) -> None:
        self.ensemble = ensemble

    def run(self, jobs: Sequence[Job]) -> None:
        for job in jobs:
            self._run_one(job)

    def _run_one(self, job: Job) -> None:
        stream = self.ensemble.stream(job.prompt, job.config, chat=job.chat)
        try:
            for chunk in stream:
                if job.cancelled.is_set():
                    log.info("request cancelled by its client; worker freed")
                    return
                job.emit("chunk", chunk)
        finally:
            stream.close()


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
        self.lock = threading.Lock()
        """Held by the worker while it generates: take it to use the ensemble from another thread."""
        self._stop = False
        self._thread: threading.Thread | None = None

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
        job = Job(prompt, chat, config, asyncio.get_running_loop())
        with self._cond:
            self._waiting = collections.deque(j for j in self._waiting if not j.cancelled.is_set())
            if self._stop:
                raise OverloadedError("the server is shutting down")
            if len(self._waiting) >= self.max_queue:
                self.stats.rejected += 1
                raise OverloadedError(f"the server is overloaded: {len(self._waiting)} requests are already waiting")
            self._waiting.append(job)
            self._cond.notify()
        return job

    def snapshot(self) -> dict[str, Any]:
        with self._cond:
            waiting = sum(not j.cancelled.is_set() for j in self._waiting)
            return {
                "waiting": waiting,
                "running": len(self._running),
                "max_queue": self.max_queue,
                "max_batch": self.runner.max_batch,
                **self.stats.__dict__,
            }

    # -- the worker -----------------------------------------------------------------

    def _take(self) -> list[Job] | None:
        with self._cond:
            while True:
                while self._waiting and self._waiting[0].cancelled.is_set():
                    self._waiting.popleft()
                    self.stats.cancelled += 1
                if self._stop:
                    return None
                if self._waiting:
                    n = max(1, self.runner.max_batch)
                    batch = [self._waiting.popleft() for _ in range(min(n, len(self._waiting)))]
                    self._running = batch
                    return batch
                self._cond.wait()

    def _work(self) -> None:
        while (batch := self._take()) is not None:
            now = time.perf_counter()
            for job in batch:
                job.started = now
            try:
                with self.lock:
                    self.runner.run(batch)
            except Exception as err:  # a bug, or a user error found late: report it to every job
                if not _is_user_error(err):
                    log.exception("generation failed")
                for job in batch:
                    if not job.cancelled.is_set():
                        job.emit("error", err)
                with self._cond:
                    self.stats.failed += len(batch)
                    self._running = []
                continue
            with self._cond:
                for job in batch:
                    if job.cancelled.is_set():
                        self.stats.cancelled += 1
                    else:
                        self.stats.completed += 1
                        job.emit("done", None)
                self._running = []


def _is_user_error(err: BaseException) -> bool:
    from ..errors import UniteError

    return isinstance(err, UniteError)
