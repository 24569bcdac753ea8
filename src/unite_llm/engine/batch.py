"""The one decode loop, and the one driver that feeds it.

::

    tracks  = each member's tokens for the prompt             (prompts.start_track)
    repeat:
        logits_i = member_i.next_logits(tracks_i.tokens)       (KV cache kept, suffix only)
        dist     = method([logits_1, ...], weights)            (methods.unite.UniTE)
        choice   = choose(dist, config, rng)                   (sampling.choose)
        output  += bytes of the choice; each track re-tokenizes its tail (sync.TokenTrack)
        stop on END, a stop string, max_new_tokens or a full context

:class:`DecodeBatch` is that loop over rows that join, step together and leave;
:func:`drive` admits rows from a :class:`RowFeed` between its steps.  ``Ensemble.generate``,
``stream`` and ``generate_batch`` feed it a fixed list of prompts; ``unite serve`` feeds it
requests as they arrive (continuous batching).  Every step leaves a
:class:`~unite_llm.engine.outputs.StepRecord`, enough to explain any decision the ensemble made.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from ..candidates import END
from ..members.base import reset_cache, start_sequence
from ..methods.base import StepDistribution
from ..sampling import GenerationConfig, choose
from ..scores import Scores
from ..stopping import StopStrings
from ..sync import TokenTrack
from .core import EngineCore
from .outputs import GenerationOutput, StepRecord, StreamChunk, Timing

log = logging.getLogger("unite_llm")


class DecodeBatch:
    """The one decode loop: rows join, step together and leave.

    As in vLLM's engine (``add_request``, then ``step`` until nothing is left), a row is added
    with its own generation settings, every :meth:`step` runs one forward pass of each member
    over all active rows (a row added since the last step gets its prompt evaluated in that
    same pass) and then one ensemble step per row, and a row leaves when it finishes or is
    cancelled.  Use it inside the core's turn (``Ensemble.exclusive()``): the members' KV
    state is the batch's.

    ``batched=False`` holds one row at a time and calls ``next_logits`` (members that keep
    one sequence, and outputs that must be a function of the prompt alone).
    """

    def __init__(self, core: EngineCore, *, batched: bool) -> None:
        self.core = core
        self.batched = batched
        self.rows: dict[int, _Row] = {}
        self._ids = itertools.count()
        self._base = next(_calls) << 32  # batch row names, unique per batch (see BatchMember)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def capacity(self) -> int:
        """How many rows may be active at once."""
        return self.core.max_batch if self.batched else 1

    def add(self, tracks: list[TokenTrack], config: GenerationConfig) -> int:
        """Add a row (from :meth:`EngineCore.start_tracks`); returns its id, in order of addition."""
        if len(self.rows) >= self.capacity:
            raise RuntimeError(f"the batch is full ({self.capacity} rows)")
        core = self.core
        if not self.rows:  # nothing is running: the members may now forget or keep their caches
            for m in core.members:
                if not core.prefix_cache:
                    reset_cache(m)
                start_sequence(m)  # the prompt is evaluated by a plan that depends on it alone
        row = _Row(tracks, config, core.weights, core.load_s)
        row.prompt_tokens = {m.name: len(t) for m, t in zip(core.members, tracks)}
        t0 = time.perf_counter()
        weights = core.prepare(tracks)  # set-up that needs the members or the prompt
        row.timing.prepare_s = time.perf_counter() - t0
        if weights is not None:  # this generation's own weights (PackLLM)
            row.weights = weights
        rid = next(self._ids)
        self.rows[rid] = row
        return rid

    def cancel(self, rid: int) -> None:
        """Drop a row (its client went away); the others go on undisturbed."""
        self.rows.pop(rid, None)

    def _forward(self, ids: list[int], only: Sequence[int] | None = None) -> list[Any]:
        core = self.core
        if not self.batched:
            return core.forward([t.tokens for t in self.rows[ids[0]].tracks], only=only)
        contexts = [[self.rows[r].tracks[i].tokens for r in ids] for i in range(len(core.members))]
        return core.forward(contexts, rows=[self._base + r for r in ids], only=only)

    def _gated_forward(self, ids: list[int]) -> tuple[list[Any], np.ndarray]:
        """The primary first; the partners only if the gate opens for some row (a batch runs
        them over every row, so no row's sequence is dropped).  Returns the scores and, per
        row, whether it is ensembled this step."""
        core = self.core
        assert core.gate is not None and core.primary is not None
        p = core.primary
        scores = self._forward(ids, only=[p])
        is_open = core.gate.is_open(scores[p], len(core.members[p].vocab))
        if is_open.any() and len(core.members) > 1:
            partners = self._forward(ids, only=[i for i in range(len(core.members)) if i != p])
            scores = [scores[p] if i == p else partners[i] for i in range(len(core.members))]
        else:
            is_open[:] = False
        return scores, is_open

    def step(self) -> list[tuple[int, StreamChunk]]:
        """One forward pass and one ensemble step of every active row: ``(row id, chunk)``
        pairs, a row's last one carrying its output (the row has left the batch then)."""
        core = self.core
        ids = list(self.rows)
        if not ids:
            return []
        live = [self.rows[rid] for rid in ids]  # before any row finishes and leaves
        t_fwd = time.perf_counter()
        if core.gate is None:
            scores, is_open = self._forward(ids), np.ones(len(ids), dtype=bool)
        else:
            scores, is_open = self._gated_forward(ids)
        now = time.perf_counter()
        out: list[tuple[int, StreamChunk]] = []
        stepping: list[int] = []  # positions in ids of the rows that step now
        for j, (rid, row) in enumerate(zip(ids, live)):
            if row.decode_t0 is None:  # its prompt was evaluated in this pass
                row.timing.prefill_s = now - t_fwd
                row.decode_t0 = now
            else:
                row.timing.members_s += now - t_fwd
            if len(row.steps) >= row.config.max_new_tokens:  # max_new_tokens == 0
                out.append((rid, self._finish(rid)))
            else:
                stepping.append(j)
        if not stepping:
            return out
        results = core.step(
            scores,
            [r.weights for r in live],
            ignore_eos=[r.config.ignore_eos for r in live],
            ensembled=is_open.tolist(),
            batched=self.batched,
            rows=stepping,
        )
        for j, (dist, logits, consulted) in zip(stepping, results):
            out.extend(self._advance(ids[j], dist, logits, consulted))
        return out

    def _advance(
        self, rid: int, dist: StepDistribution, logits: list[Scores], consulted: Sequence[int]
    ) -> list[tuple[int, StreamChunk]]:
        """Choose a row's candidate, append it to every member's track, and say what to show."""
        core, row = self.core, self.rows[rid]
        index = len(row.steps)
        choice = choose(dist.probs, row.config, row.rng)
        record = core.record(index, dist, choice, consulted)
        names = [core.names[i] for i in consulted]
        record.approximated = [f"{name}: {t}" for name, lg in zip(names, logits) for t in lg.approximated]
        row.steps.append(record)
        row.timing.steps += 1
        log.debug(
            "step %d: union=%d chose %r p=%.3f %s", index, record.union_size, record.chosen, record.prob, record.member_probs
        )
        candidate = dist.candidates[choice]
        if candidate is END:
            row.finish = "stop"
            return [(rid, self._finish(rid))]
        assert isinstance(candidate, bytes)
        before = len(row.output)
        primary_logits = logits[list(consulted).index(core.primary)] if core.primary is not None else None
        row.output += core.append(row.tracks, candidate, primary_logits)
        hit = row.stops.find(row.output, before)
        if hit is not None:
            row.output = row.output[: hit[0]]
            row.finish, row.stop_reason = "stop", hit[1]
            return [(rid, self._finish(rid))]
        safe = row.stops.safe_end(row.output)
        out = [(rid, StreamChunk(row.output[row.emitted : safe].decode("utf-8", errors="replace"), record))]
        row.emitted = max(row.emitted, safe)
        if index + 1 == row.config.max_new_tokens or any(len(t) >= m.n_ctx for m, t in zip(core.members, row.tracks)):
            out.append((rid, self._finish(rid)))  # "length": the budget or a member's context is full
        return out

    def _finish(self, rid: int) -> StreamChunk:
        row = self.rows.pop(rid)
        assert row.decode_t0 is not None
        return row.final(time.perf_counter() - row.decode_t0)


# Batch row names are unique per DecodeBatch, so a member starts a fresh batch cache for each
# batch instead of carrying the previous batch's (dead) columns along.
_calls = itertools.count(1)


class _Row:
    """One prompt's generation state in the decode loop."""

    def __init__(self, tracks: list[TokenTrack], config: GenerationConfig, weights: np.ndarray, load_s: float) -> None:
        self.tracks = tracks
        self.config = config
        self.stops = StopStrings(config.stop)
        self.decode_t0: float | None = None  # set when its prompt has been evaluated
        self.rng = np.random.default_rng(config.seed)
        self.weights = weights
        self.prompt_tokens: dict[str, int] = {}
        self.output = b""
        self.emitted = 0
        self.steps: list[StepRecord] = []
        self.finish = "length"
        self.stop_reason: str | None = None
        self.timing = Timing(load_s=load_s)

    def final(self, decode_s: float) -> StreamChunk:
        """The last chunk: the text not yet shown, and the whole output."""
        self.timing.decode_s = decode_s
        result = GenerationOutput(
            text=self.output.decode("utf-8", errors="replace"),
            output_bytes=self.output,
            finish_reason=self.finish,
            stop_reason=self.stop_reason,
            steps=self.steps,
            timing=self.timing,
            prompt_tokens=self.prompt_tokens,
        )
        return StreamChunk(
            self.output[self.emitted :].decode("utf-8", errors="replace"), self.steps[-1] if self.steps else None, result
        )


K = TypeVar("K")


class RowFeed(Protocol[K]):
    """Where :func:`drive` gets its rows: a fixed list of prompts, or the server's queue."""

    def take(self, free: int) -> list[tuple[K, list[TokenTrack], GenerationConfig]]:
        """Up to ``free`` new rows, now (possibly none): a key for each, its tracks and settings."""
        ...

    def refused(self, key: K, error: Exception) -> None:
        """The batch refused the row (its step method's set-up failed): raise to fail the whole
        run, or return to go on without it."""
        ...

    def cancelled(self, key: K) -> bool:
        """Whether the row's caller went away (checked between steps; the row then leaves)."""
        ...


def drive(core: EngineCore, feed: RowFeed[K], *, size: int, batched: bool, joins: bool) -> Iterator[list[tuple[K, StreamChunk]]]:
    """Run rows from ``feed`` through one :class:`DecodeBatch` of up to ``size`` rows until the
    feed has none left: one list of ``(key, chunk)`` per step, a row's last chunk carrying its
    output.  With ``joins`` a new row is admitted between any two steps (where the members take
    a joining row cheaply: llama.cpp; the server always); otherwise only into an empty batch,
    so rows go in groups.  Call it inside the core's turn."""
    batch = DecodeBatch(core, batched=batched)
    size = max(1, min(size, batch.capacity))
    keys: dict[int, K] = {}
    while True:
        if joins or not batch:
            for key, tracks, config in feed.take(size - len(batch)):
                try:
                    keys[batch.add(tracks, config)] = key
                except Exception as err:  # this row's problem: the feed says whether the run goes on
                    feed.refused(key, err)
        for rid, key in list(keys.items()):
            if feed.cancelled(key):
                batch.cancel(rid)
                del keys[rid]
        if not batch:
            return
        results = [(keys[rid], chunk) for rid, chunk in batch.step()]
        for rid in [r for r in keys if r not in batch.rows]:
            del keys[rid]
        yield results


class PromptFeed(Generic[K]):
    """A fixed list of rows, each started before the first step (so every prompt is checked
    before any member forgets its cache); a refusal fails the run."""

    def __init__(self, rows: Sequence[tuple[K, list[TokenTrack], GenerationConfig]]) -> None:
        self.rows = list(rows)

    def take(self, free: int) -> list[tuple[K, list[TokenTrack], GenerationConfig]]:
        taken, self.rows = self.rows[:free], self.rows[free:]
        return taken

    def refused(self, key: K, error: Exception) -> None:
        raise error

    def cancelled(self, key: K) -> bool:
        return False
