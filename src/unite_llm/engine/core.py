"""The engine core: the member set and the four operations of a step.

::

    scores = core.forward(contexts)                      each member's next-token scores
    dists  = core.step(scores, weights, ignore_eos, ...)  the step method, per row
    record = core.record(index, dist, choice, consulted)  what the step did, for the logs
    piece  = core.append(tracks, candidate, scores)       the choice, into every member's track

:class:`~unite_llm.engine.batch.DecodeBatch` (the one decode loop) drives a core through
these and nothing else; :class:`~unite_llm.engine.Ensemble` is the public face over both.
The core also owns the members' turn (one generation at a time, :meth:`EngineCore.exclusive`)
and their threads, and frees them on :meth:`EngineCore.close`.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import Any

import numpy as np

from ..candidates import END, candidate_text
from ..errors import InvalidConfigError
from ..members import Member, batch_rows, forward_rows, supports_batch
from ..members.base import check_abilities, joins_cheaply
from ..methods.base import BatchView, MemberScores, StepDistribution, StepMethod
from ..methods.gate import Gate
from ..methods.weighting import WeightRule, apply_rules
from ..prompts import Prompt, start_track
from ..scores import DenseScores, Scores, as_scores
from ..sync import TokenTrack
from .checks import checked_weights, normalised_weights
from .outputs import StepRecord, UnionEntry


class EngineCore:
    """Members, step method, weights, primary, gate and weighting rules, and what a step needs
    beside them (the thread pool, each member's sub-token cache, the members' turn).

    ``method`` is None for an ensemble whose method answers whole prompts (it is never
    stepped); ``weights`` are normalised here.
    """

    def __init__(
        self,
        members: Sequence[Member],
        method: StepMethod | None,
        *,
        weights: Sequence[float] | None = None,
        primary: str | int | None = None,
        load_s: float = 0.0,
        parallel: bool | None = None,
        prefix_cache: bool = True,
        gate: Gate | None = None,
        weighting: Sequence[WeightRule] = (),
    ) -> None:
        if not members:
            raise InvalidConfigError("an ensemble needs at least one member")
        names = [m.name for m in members]
        if len(set(names)) != len(names):
            raise InvalidConfigError(f"member names must be unique, got {names}")
        for m in members:
            check_abilities(m)
        self.members = list(members)
        self.weights = normalised_weights(weights, len(members))
        self.method = method
        self.gate = gate
        self.weighting = list(weighting)
        # A lone member is its own primary: it follows its own tokens, so a one-member
        # "ensemble" decodes exactly as the model does by itself.  The gate reads the
        # primary's confidence and a floor keeps the primary's weight, so either needs a
        # primary: the first member unless one is named.
        if primary is None and (len(self.members) == 1 or gate is not None or any(r.needs_primary for r in self.weighting)):
            primary = 0
        self.primary = self.index(primary) if primary is not None else None
        self.load_s = load_s
        # Members step in threads (llama.cpp, torch and Ray's ray.get release the GIL);
        # default on whenever there is more than one member to overlap.
        self.parallel = len(self.members) > 1 if parallel is None else bool(parallel)
        self._pool: ThreadPoolExecutor | None = None
        # Keep each member's KV cache across generations (a shared few-shot prefix is
        # evaluated once).  llama.cpp members reuse only what their prompt plan would compute
        # itself, so outputs depend on the prompt alone either way (members.base.start_sequence);
        # off, every generation starts cold (members.base.reset_cache).
        self.prefix_cache = prefix_cache
        self._subtoken_cache: list[dict[bytes, int | None]] = [{} for _ in members]
        self.subtoken_fns: list[Callable[[bytes], int | None]] = [
            functools.partial(self.first_subtoken, i) for i in range(len(self.members))
        ]  # built once, not per step
        self._lock = threading.Lock()
        self._owner: int | None = None
        self._closed = False

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.members]

    def index(self, ref: str | int) -> int:
        """A member's position from its name or index."""
        if isinstance(ref, int):
            if not 0 <= ref < len(self.members):
                raise InvalidConfigError(f"primary index {ref} out of range for {len(self.members)} members")
            return ref
        if ref not in self.names:
            raise InvalidConfigError(f"primary {ref!r} is not a member (members: {', '.join(self.names)})")
        return self.names.index(ref)

    @property
    def max_batch(self) -> int:
        """Rows that decode together in one forward pass (1 when a member cannot batch)."""
        if not all(supports_batch(m) for m in self.members):
            return 1
        return min(batch_rows(m) for m in self.members)

    @property
    def joins_cheaply(self) -> bool:
        """Whether every member takes a joining row without re-evaluating the others (``cheap_joins``)."""
        return all(joins_cheaply(m) for m in self.members)

    # -- the members' turn and life ---------------------------------------------------

    def in_turn(self) -> bool:
        """Whether the calling thread holds the members' turn (is inside :meth:`exclusive`)."""
        return self._owner == threading.get_ident()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """One generation at a time: the members' KV caches and the step method's
        per-generation state are shared, so calls from several threads queue here (in
        arrival order of the lock) instead of corrupting each other.  A second generation
        started in the *same* thread while one is unfinished (an open stream) would wait for
        itself forever, so it is refused."""
        self.check_open()
        me = threading.get_ident()
        if self._owner == me:
            raise RuntimeError(
                "this Ensemble is already generating in this thread (an unfinished stream?): "
                "finish or close it before starting another generation"
            )
        with self._lock:
            self.check_open()  # closed while this call waited its turn
            self._owner = me
            try:
                yield
            finally:
                self._owner = None

    def close(self) -> None:
        """Free the members once the generation holding the turn has finished (at once when
        this thread holds it: its own open stream cannot finish first).  Closing twice is harmless."""
        if self.in_turn():
            self._close()
            return
        with self._lock:
            self._close()

    def _close(self) -> None:
        self._closed = True
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        for m in self.members:
            m.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def check_open(self) -> None:
        """Refuse work once closed: the members' llama.cpp memory is freed, and reading it kills the process."""
        if self._closed:
            raise RuntimeError("this Ensemble is closed (close() or its with-block ended): load a new one")

    # -- a step -------------------------------------------------------------------------

    def start_tracks(self, prompt: Prompt, *, chat: bool) -> list[TokenTrack]:
        """Each member's token track for ``prompt`` (raises on a prompt a member cannot take)."""
        return [start_track(m, prompt, chat=chat) for m in self.members]

    def prepare(self, tracks: Sequence[TokenTrack]) -> np.ndarray | None:
        """The step method's per-generation set-up (``needs_prepare``): this generation's own
        weights (PackLLM), or None to keep the ensemble's."""
        if self.method is None or not self.method.needs_prepare:
            return None
        weights = self.method.prepare(self.members, tracks, self.primary)
        return None if weights is None else checked_weights(weights, len(self.members), self.method.name)

    def forward(self, contexts: list[Any], rows: list[int] | None = None, only: Sequence[int] | None = None) -> list[Any]:
        """Every member's next-token logits for its context (one entry per member; with
        ``only``, those members run and the others' entries are ``None``).

        Batched (``rows`` names the active rows): each entry is a list of contexts, one
        per row, and each member returns ``[len(rows), vocab]`` scores in one pass.
        With ``parallel`` the members run in the core's threads and the step waits for
        all of them.  Each member is called once per forward, so a result that is a view
        into that member's buffer stays valid until its next call, as in the sequential case.
        """

        def run(member: Member, ctx: Any) -> Any:
            return forward_rows(member, ctx, rows) if rows is not None else member.next_logits(ctx)

        chosen = range(len(self.members)) if only is None else only
        out: list[Any] = [None] * len(self.members)
        if not self.parallel or len(chosen) == 1:
            for i in chosen:
                out[i] = run(self.members[i], contexts[i])
            return out
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=len(self.members), thread_name_prefix="unite-member")
        futures = {i: self._pool.submit(run, self.members[i], contexts[i]) for i in chosen}
        wait(futures.values())  # all finish before an error is raised: no member is left mid-step
        for i, f in futures.items():
            out[i] = f.result()
        return out

    def first_subtoken(self, i: int, candidate: bytes) -> int | None:
        """Member ``i``'s first token of ``candidate`` (cached: a union repeats its candidates)."""
        cache = self._subtoken_cache[i]
        if candidate not in cache:
            member = self.members[i]
            cache[candidate] = member.vocab.first_subtoken(candidate, member.tokenize)
        return cache[candidate]

    def step(
        self,
        scores: list[Any],
        weights: Sequence[np.ndarray],
        *,
        ignore_eos: Sequence[bool],
        ensembled: Sequence[bool],
        batched: bool,
        rows: Sequence[int] | None = None,
    ) -> list[tuple[StepDistribution, list[Scores], list[int]]]:
        """For each of ``rows`` (positions in the scores; default every row): the step
        distribution, the consulted members' scores of that row, and which members were
        consulted (every member, or the primary alone where ``ensembled`` is False: the gate
        stayed closed).

        ``scores`` holds each member's answer to :meth:`forward` (a member that did not run is
        ``None``); ``weights``, ``ignore_eos`` and ``ensembled`` have one entry per row of the
        scores.  A step method takes one ``ignore_eos`` and one member set per call, so rows
        that agree on both are stepped together.  A lone member is stepped with weight 1.
        """
        n = len(weights)
        wanted = list(range(n)) if rows is None else list(rows)
        everyone = list(range(len(self.members)))
        alone = [self.primary] if self.primary is not None else everyone
        groups: dict[tuple[bool, bool], list[int]] = {}
        for j in wanted:
            groups.setdefault((bool(ignore_eos[j]), bool(ensembled[j])), []).append(j)
        found: dict[int, tuple[StepDistribution, list[Scores], list[int]]] = {}
        for (eos, ens), group in groups.items():
            consulted = everyone if ens else alone
            part = [scores[i] for i in consulted]
            if batched and group != list(range(n)):
                part = [s[group] for s in part]
            results = self._step_rows(part, [weights[j] for j in group], batched=batched, ignore_eos=eos, consulted=consulted)
            for j, (dist, logits) in zip(group, results):
                found[j] = (dist, logits, consulted)
        return [found[j] for j in wanted]

    def _step_rows(
        self, scores: list[Any], weights: list[np.ndarray], *, batched: bool, ignore_eos: bool, consulted: list[int]
    ) -> list[tuple[StepDistribution, list[Scores]]]:
        """One group of rows through the step method.

        One row: each member's answer is that row's scores.  A batch: a method that
        declares ``batched`` steps every row at once on the members' own ``[rows, vocab]``
        scores (UniTE's top-k stays on the device); any other gets host copies, row by row.
        The weighting rules then re-mix each row's member distributions.
        """
        method = self.method
        if method is None:
            raise RuntimeError("this ensemble's method answers whole prompts: it has no per-step rule")
        members = [self.members[i] for i in consulted]
        subtokens = [self.subtoken_fns[i] for i in consulted]
        alone = len(consulted) < len(self.members)
        row_weights = [np.ones(1) if alone else w for w in weights]
        out: list[tuple[StepDistribution, list[Scores]]]
        if not batched:
            single = [as_scores(s) for s in scores]
            views = [MemberScores(m.name, lg, m.vocab, f) for m, lg, f in zip(members, single, subtokens)]
            out = [(method(views, row_weights[0], ignore_eos=ignore_eos), single)]
        elif method.batched:
            view = BatchView([m.name for m in members], [m.vocab for m in members], subtokens)
            dists, gathered = method.step_batch(scores, view, np.stack(row_weights), ignore_eos=ignore_eos)
            out = list(zip(dists, gathered))
        else:
            host = [_host_rows(s) for s in scores]
            out = []
            for b, w in enumerate(row_weights):
                logits: list[Scores] = [DenseScores(h[b]) for h in host]
                views = [MemberScores(m.name, lg, m.vocab, f) for m, lg, f in zip(members, logits, subtokens)]
                out.append((method(views, w, ignore_eos=ignore_eos), logits))
        if self.weighting and not alone:
            for (dist, _), w in zip(out, weights):
                dist.probs = apply_rules(self.weighting, w, dist.member_probs, self.primary)
        return out

    def record(self, index: int, dist: StepDistribution, choice: int, consulted: Sequence[int]) -> StepRecord:
        """What step ``index`` did: the union, each consulted member's probabilities and rules."""
        names = [self.names[i] for i in consulted]
        union = [
            UnionEntry(
                text=candidate_text(c),
                end=c is END,
                prob=float(dist.probs[j]),
                members={n: float(dist.member_probs[i, j]) for i, n in enumerate(names)},
                rules={n: dist.rules[i][j] for i, n in enumerate(names)} if dist.rules else {},
            )
            for j, c in enumerate(dist.candidates)
        ]
        return StepRecord(
            index=index,
            chosen=candidate_text(dist.candidates[choice]),
            prob=float(dist.probs[choice]),
            union_size=len(dist.candidates),
            member_probs={n: float(dist.member_probs[i, choice]) for i, n in enumerate(names)},
            union=union,
            aligned=dist.aligned,
            end=dist.candidates[choice] is END,
            ensembled=len(names) == len(self.members),
        )

    def append(self, tracks: list[TokenTrack], candidate: bytes, primary_logits: Scores | None) -> bytes:
        """Append the chosen candidate to every member (a member the gate skipped gets the text
        too, and evaluates it when next consulted); returns the bytes appended.  In primary mode
        ``primary_logits`` are the primary's scores of this step."""
        if self.primary is None:
            for t in tracks:
                t.append(candidate)
            return candidate
        # Primary mode: the output follows the primary member's own tokens.
        p = self.primary
        vocab = self.members[p].vocab
        ids = vocab.ids_of(candidate)
        if ids:
            assert primary_logits is not None
            values = primary_logits.at(ids)
            tid = ids[int(np.argmax(values))]  # the first of equal scores, as max() picks
        else:
            sub = self.first_subtoken(p, candidate)
            if sub is None:
                raise RuntimeError(f"the primary member cannot spell {candidate!r}")
            tid = sub
        piece = vocab.pieces[tid]
        for i, t in enumerate(tracks):
            if i == p:
                t.append_tokens([tid])
            else:
                t.append(piece)
        return piece


def _host_rows(scores: Any) -> np.ndarray:
    """A member's ``[rows, vocab]`` scores as a host float32 array (torch tensors copied out)."""
    if type(scores).__module__.startswith("torch"):
        return scores.float().cpu().numpy()
    return np.asarray(scores, dtype=np.float32)
