"""The decode loop: members score, a step method unites, one candidate is appended.

::

    tracks  = each member's tokens for the prompt             (prompts.start_track)
    repeat:
        logits_i = member_i.next_logits(tracks_i.tokens)       (KV cache kept, suffix only)
        dist     = method([logits_1, ...], weights)            (methods.unite.UniTE)
        choice   = choose(dist, config, rng)                   (sampling.choose)
        output  += bytes of the choice; each track re-tokenizes its tail (sync.TokenTrack)
        stop on END, a stop string, max_new_tokens or a full context

Every step leaves a :class:`StepRecord` (union, each member's probabilities, the rule
behind each number), enough to explain any decision the ensemble made.
"""

from __future__ import annotations

import functools
import itertools
import logging
import threading
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, cast, overload

import numpy as np

from .errors import InvalidConfigError, InvalidInputError
from .loading import load_members
from .members import Member, batch_rows, forward_rows, split_spec, supports_batch
from .members.base import check_abilities, joins_cheaply, reset_cache, start_sequence
from .methods import make_method
from .methods.base import END, BatchView, MemberScores, StepDistribution, StepMethod, candidate_text
from .methods.gate import Gate, make_gate
from .methods.weighting import WeightRule, apply_rules, make_rules
from .models import DEFAULT_ENSEMBLE, DEFAULT_SETTINGS
from .prompts import Prompt, start_track
from .sampling import GenerationConfig, choose
from .scores import DenseScores, Scores, as_scores
from .stopping import StopStrings
from .sync import TokenTrack

log = logging.getLogger("unite_llm")


@dataclass(frozen=True)
class UnionEntry:
    """One candidate of a step's union, as :class:`StepRecord` keeps it (and ``to_dict``
    writes it: these fields, in this order, are the wire format of ``unite.union``)."""

    text: str
    """The candidate's text (``<END>`` for END; partial UTF-8 shown escaped)."""
    end: bool
    """True for the END candidate, whatever ``text`` reads."""
    prob: float
    """The ensemble's probability of the candidate."""
    members: dict[str, float]
    """Each consulted member's renormalised probability of it."""
    rules: dict[str, str]
    """Each consulted member's rule (UniTE: topk, vocab, subtoken, end, none); empty when the
    step method has none."""


@dataclass
class StepRecord:
    """What happened at one step."""

    index: int
    chosen: str
    """The appended text (``<END>`` for end of sequence; partial UTF-8 shown escaped)."""
    prob: float
    """The ensemble's probability of the choice."""
    union_size: int
    member_probs: dict[str, float]
    """Each member's renormalised probability of the choice."""
    union: list[UnionEntry] = field(default_factory=list)
    """Every candidate: text, ensemble prob, each member's prob and the rule used."""
    approximated: list[str] = field(default_factory=list)
    """``"member: candidate"`` for each probability a remote member could only bound
    (see :mod:`unite_llm.members.openai`); empty when every number is exact."""
    aligned: int = 0
    """Tokens the step method aligned across vocabularies (UniTE: the union; GaC: the whole union vocabulary)."""
    end: bool = False
    """True when the step chose END (the generation stopped; ``chosen`` then reads ``<END>``,
    which a real text piece ``<END>`` can also read: test this flag, not the text)."""
    ensembled: bool = True
    """False when the confidence gate was closed: the primary chose alone and the partners
    were not run (``member_probs`` and ``union`` then hold the primary only)."""

    def to_dict(self, *, full: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if not full:
            d.pop("union")
        return d


@dataclass
class Timing:
    load_s: float = 0.0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    steps: int = 0
    members_s: float = 0.0
    """Of ``decode_s``, the time spent inside the members (their forward passes); the
    rest is the ensemble's own overhead (step method, choice, re-tokenization).  In a batch
    the forward passes are shared: each row counts every pass it took part in."""
    prepare_s: float = 0.0
    """Time in the step method's ``prepare`` hook (vocabulary maps on first use, per-prompt weights)."""

    @property
    def step_ms(self) -> float:
        return 1000 * self.decode_s / self.steps if self.steps else 0.0


@dataclass
class GenerationOutput:
    """A finished generation (like vLLM's ``CompletionOutput``)."""

    text: str
    output_bytes: bytes
    finish_reason: str
    """``"stop"`` (END or a stop string) or ``"length"`` (max_new_tokens or context)."""
    stop_reason: str | None
    """The stop string that ended it; None for END or length."""
    steps: list[StepRecord]
    timing: Timing
    prompt_tokens: dict[str, int]

    def to_dict(self, *, full: bool = False) -> dict[str, Any]:
        return {
            "text": self.text,
            "finish_reason": self.finish_reason,
            "stop_reason": self.stop_reason,
            "prompt_tokens": self.prompt_tokens,
            "steps": [s.to_dict(full=full) for s in self.steps],
            "timing": asdict(self.timing),
        }


@dataclass
class StreamChunk:
    """One step of a stream: the text now safe to show, and the step behind it."""

    text: str
    step: StepRecord | None
    output: GenerationOutput | None = None
    """Set on the last chunk only."""


def _checked_weights(weights: Sequence[float] | np.ndarray, n: int, who: str) -> np.ndarray:
    """Weights a step method's ``prepare`` returned, checked but used as given."""
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,) or not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise InvalidConfigError(f"{who}: prepare must return {n} positive finite weights, got {w.tolist()}")
    return w


def _normalised_weights(weights: Sequence[float] | None, n: int) -> np.ndarray:
    if weights is None:
        return np.full(n, 1.0 / n)
    if isinstance(weights, str | bytes | Mapping) or not isinstance(weights, Sequence | np.ndarray):
        raise InvalidConfigError(f"weights must be a list of numbers, one per member, got {weights!r}")
    try:
        w = np.asarray(list(weights), dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidConfigError(f"weights must be positive numbers, got {list(weights)!r}") from None
    if w.ndim != 1 or any(isinstance(x, bool) for x in weights):
        raise InvalidConfigError(f"weights must be positive numbers, got {list(weights)!r}")
    if len(w) != n:
        raise InvalidConfigError(f"{len(w)} weights given for {n} members")
    if not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise InvalidConfigError(f"weights must be positive numbers, got {list(weights)}")
    return w / w.sum()


def _checked_specs(specs: Any) -> list[str]:
    """Member specs as a list: one string is one spec (not its characters), anything else a
    list of non-empty strings."""
    if isinstance(specs, str):
        return [specs]
    if isinstance(specs, bytes) or not isinstance(specs, Sequence):
        raise InvalidConfigError(f"members must be a list of model specs (aliases, .gguf paths, prefix:...), got {specs!r}")
    bad = [s for s in specs if not isinstance(s, str) or not s.strip()]
    if bad:
        raise InvalidConfigError(f"a member spec must be a non-empty string, got {bad[0]!r}")
    if not specs:
        raise InvalidConfigError("an ensemble needs at least one member")
    return list(specs)


def _check_distinct(specs: Sequence[str]) -> None:
    dupes = sorted({s for s in specs if specs.count(s) > 1})
    if dupes:
        raise InvalidConfigError(f"member {dupes[0]!r} is given more than once (member names must be unique)")


def _default_name(spec: str) -> str | None:
    """The name an in-process llama.cpp member takes from its spec (None for other backends)."""
    if split_spec(spec)[0] != "gguf":
        return None
    return Path(spec).stem if spec.endswith(".gguf") else spec


def _check_primary(primary: str | int | None, specs: Sequence[str]) -> None:
    """``primary`` checked against the specs before any model loads: an index in range, or a
    name one of the members will have (only where every member's name follows from its spec)."""
    if primary is None:
        return
    if isinstance(primary, bool) or not isinstance(primary, str | int):
        raise InvalidConfigError(f"primary must be a member name or index, got {primary!r}")
    if not specs:
        return
    if isinstance(primary, int):
        if not 0 <= primary < len(specs):
            raise InvalidConfigError(f"primary index {primary} out of range for {len(specs)} members")
        return
    names = [_default_name(s) for s in specs]
    if None not in names and primary not in names and primary not in specs:
        raise InvalidConfigError(f"primary {primary!r} is not a member (members: {', '.join(cast('list[str]', names))})")


def _is_batch(prompt: Any) -> bool:
    """A list of prompts, not one chat (a chat is a list of message mappings)."""
    return isinstance(prompt, list | tuple) and bool(prompt) and not any(isinstance(p, Mapping) for p in prompt)


class Ensemble:
    """Several members decoding as one model.

    >>> ens = Ensemble.load(["smollm2-135m-instruct", "gemma3-270m"])   # doctest: +SKIP
    >>> ens.generate("The capital of France is", max_new_tokens=8).text  # doctest: +SKIP

    Thread safety: ``generate``, ``stream`` and ``generate_batch`` may be called from
    several threads; an ensemble runs one generation at a time (its members hold one KV
    state each) and the others wait their turn, so each call returns what it would return
    alone.  For many concurrent users, batch prompts into one call (members that batch
    decode them together) or serve through ``unite serve``'s queue.  A stream holds the
    ensemble until it is exhausted or closed (a stream kept alive unfinished makes every
    other caller, and ``close()``, wait for it); consume a stream in one thread, and do not
    start another generation in the thread that holds an open stream: that raises
    ``RuntimeError`` instead of waiting for itself.  Work on the members outside
    ``generate`` (scoring, :mod:`unite_llm.loglik`) takes the same turn with :meth:`exclusive`.
    """

    def __init__(
        self,
        members: Sequence[Member],
        *,
        weights: Sequence[float] | None = None,
        k: int = 10,
        method: str | StepMethod = "unite",
        primary: str | int | None = None,
        load_s: float = 0.0,
        parallel: bool | None = None,
        prefix_cache: bool = True,
        gate: Gate | float | dict[str, Any] | None = None,
        weighting: Sequence[str | WeightRule] | str | None = None,
    ) -> None:
        if not members:
            raise InvalidConfigError("an ensemble needs at least one member")
        names = [m.name for m in members]
        if len(set(names)) != len(names):
            raise InvalidConfigError(f"member names must be unique, got {names}")
        for m in members:
            check_abilities(m)
        self.members = list(members)
        self.weights = _normalised_weights(weights, len(members))
        self.method = make_method(method, k=k) if isinstance(method, str) else method
        if not isinstance(self.method, StepMethod):
            raise InvalidConfigError(
                f"method {self.method!r} is not a StepMethod: subclass unite_llm.methods.StepMethod (it declares its hooks)"
            )
        # A lone member is its own primary: it follows its own tokens, so a one-member
        # "ensemble" decodes exactly as the model does by itself.
        if primary is None and len(self.members) == 1:
            primary = 0
        self.gate = make_gate(gate)
        self.weighting = make_rules(weighting)
        # The gate reads the primary's confidence and a floor keeps the primary's weight, so
        # either needs a primary: the first member unless one is named.
        if primary is None and (self.gate is not None or any(r.needs_primary for r in self.weighting)):
            primary = 0
        self.primary = self._index(primary) if primary is not None else None
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
        self._subtoken_fns: list[Callable[[bytes], int | None]] = [
            functools.partial(self._first_subtoken, i) for i in range(len(self.members))
        ]  # built once, not per step
        self._lock = threading.Lock()
        self._owner: int | None = None
        self._closed = False

    @classmethod
    def load(
        cls,
        specs: Sequence[str] | None = None,
        *,
        weights: Sequence[float] | None = None,
        k: int = 10,
        method: str = "unite",
        primary: str | int | None = None,
        parallel: bool | None = None,
        ray_address: str | None = None,
        prefix_cache: bool = True,
        chat_templates: Mapping[str, str] | None = None,
        n_seq: int | None = None,
        gate: Gate | float | dict[str, Any] | None = None,
        weighting: Sequence[str | WeightRule] | str | None = None,
        **member_options: Any,
    ) -> Ensemble:
        """Load members from spec strings (``.gguf`` paths, aliases, ``prefix:...``).

        With no ``specs`` this is the default ensemble as ``unite generate`` runs it: its
        members with :data:`~unite_llm.models.DEFAULT_SETTINGS` (the gate) where ``gate`` and
        ``weighting`` are not given.  Members given explicitly run exactly as given (plain UniTE
        of ``DEFAULT_ENSEMBLE`` is ``Ensemble.load(DEFAULT_ENSEMBLE)``).

        ``parallel`` steps members in threads (default: when there are several);
        in-process llama.cpp members then split the CPU cores between them unless
        ``n_threads`` is given.  ``ray_address`` joins that Ray cluster for ``ray:``
        members (default: a local one, started on first use).  ``prefix_cache=False``
        starts every generation from a cold KV cache (for llama.cpp members the same output,
        which is history-independent either way, only slower).
        ``chat_templates`` forces a chat template on members that lack one (``{"gemma3-270m":
        "gemma"}``: a builtin name, a Jinja file or Jinja text; keys are member names or specs).
        ``n_seq`` is how many sequences each in-process llama.cpp member decodes together
        (:meth:`generate_batch`, ``unite serve --max-batch``; default 1: row by row).
        ``gate`` (a threshold, or ``{"threshold": .., "signal": "top1" | "margin"}``) consults
        the partners only where the primary is unsure (:mod:`unite_llm.methods.gate`);
        ``weighting`` lists per-step weighting rules (``["floor=0.6"]``,
        :mod:`unite_llm.methods.weighting`).

        The thread plan: with a gate, members step one after the other (the primary first,
        then the partners where the gate opened), each with every core.  Without one and with
        ``parallel`` and ``n_threads`` unset, each in-process llama.cpp member's decode is timed
        at load, with every core and with its share of them, and members step in threads only
        where that is faster than one after the other (:func:`~unite_llm.thread_plan.plan_threads`).
        The loading is :func:`unite_llm.loading.load_members`'s; a config file (and the rules
        every entry point applies to one) is :func:`unite_llm.builder.build_ensemble`'s.
        """
        if specs is None:
            specs = DEFAULT_ENSEMBLE
            gate = DEFAULT_SETTINGS.get("gate") if gate is None else gate
            weighting = DEFAULT_SETTINGS.get("weighting") if weighting is None else weighting
        specs = _checked_specs(specs)
        make_method(method, k=k)  # validate settings before the slow part
        make_gate(gate)
        make_rules(weighting)
        _normalised_weights(weights, len(specs))
        _check_distinct(specs)
        _check_primary(primary, specs if "name" not in member_options else [])
        loaded = load_members(
            specs,
            parallel=parallel,
            gate=gate,
            ray_address=ray_address,
            chat_templates=chat_templates,
            n_seq=n_seq,
            **member_options,
        )
        try:
            return cls(
                loaded.members,
                weights=weights,
                k=k,
                method=method,
                primary=primary,
                load_s=loaded.load_s,
                parallel=loaded.parallel,
                prefix_cache=prefix_cache,
                gate=gate,
                weighting=weighting,
            )
        except BaseException:  # a primary that names no member: the members are freed
            loaded.close()
            raise

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.members]

    def _index(self, ref: str | int) -> int:
        if isinstance(ref, int):
            if not 0 <= ref < len(self.members):
                raise InvalidConfigError(f"primary index {ref} out of range for {len(self.members)} members")
            return ref
        if ref not in self.names:
            raise InvalidConfigError(f"primary {ref!r} is not a member (members: {', '.join(self.names)})")
        return self.names.index(ref)

    def close(self) -> None:
        """Free the members (after a generation running in another thread has finished).

        Closing twice is harmless; any use after it raises ``RuntimeError``."""
        if self.in_turn():  # this thread's own open stream: it cannot finish first
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

    def _check_open(self) -> None:
        """Refuse work once closed: the members' llama.cpp memory is freed, and reading it kills the process."""
        if self._closed:
            raise RuntimeError("this Ensemble is closed (close() or its with-block ended): load a new one")

    def __enter__(self) -> Ensemble:
        self._check_open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- generation -----------------------------------------------------------------

    @overload
    def generate(
        self, prompt: list[Prompt], config: GenerationConfig | None = None, *, chat: bool = False, **kwargs: Any
    ) -> list[GenerationOutput]: ...
    @overload
    def generate(
        self, prompt: Prompt, config: GenerationConfig | None = None, *, chat: bool = False, **kwargs: Any
    ) -> GenerationOutput: ...
    def generate(
        self, prompt: Prompt | list[Prompt], config: GenerationConfig | None = None, *, chat: bool = False, **kwargs: Any
    ) -> GenerationOutput | list[GenerationOutput]:
        """Generate to completion; ``kwargs`` are :class:`GenerationConfig` fields.

        A list of prompts (strings, or message lists in chat mode) is a batch, as with
        a transformers pipeline: it returns one :class:`GenerationOutput` per prompt
        (see :meth:`generate_batch`).
        """
        self._check_open()
        if isinstance(prompt, list | tuple) and not prompt:
            raise InvalidInputError("generate got an empty list: give a prompt, or a list of prompts to batch")
        if _is_batch(prompt):
            return self.generate_batch(cast("list[Prompt]", prompt), config, chat=chat, **kwargs)
        out = None
        for chunk in self.stream(cast(Prompt, prompt), config, chat=chat, **kwargs):  # to the end: the lock is released there
            out = chunk.output or out
        if out is None:
            raise AssertionError("stream ended without a final chunk")
        return out

    def stream(
        self, prompt: Prompt, config: GenerationConfig | None = None, *, chat: bool = False, **kwargs: Any
    ) -> Generator[StreamChunk, None, None]:
        """Generate step by step, yielding text as soon as it is complete UTF-8."""
        self._check_open()
        if _is_batch(prompt):
            raise InvalidInputError("stream takes one prompt; for a list of prompts use generate or generate_batch")
        config = _config(config, kwargs)
        with self.exclusive():
            if self.method.response_level:  # rank: whole answers, made by the method itself
                out = cast(ResponseLevel, self.method).generate(self, prompt, config, chat=chat)
                yield StreamChunk(out.text, out.steps[-1] if out.steps else None, out)
                return
            for _, chunk in self._decode([prompt], config, chat=chat, size=1):
                yield chunk

    def generate_batch(
        self, prompts: Sequence[Prompt], config: GenerationConfig | None = None, *, chat: bool = False, **kwargs: Any
    ) -> list[GenerationOutput]:
        """Generate every prompt; each output equals ``generate`` on that prompt alone.

        When every member can score a batch in one pass (``next_logits_batch``: transformers
        members, llama.cpp members loaded with ``n_seq > 1``) up to :attr:`max_batch` rows decode
        together, one forward pass per member per step, a finished row's place taken by the next
        prompt where the members allow it (:meth:`_decode`).  Without batching members the same
        loop runs each prompt as a batch of one.  Batched kernels round
        differently, so "equals" holds up to rounding of the logits, which can flip a near-tie
        (measured in ``bench/results/batching.json``).
        """
        self._check_open()
        config = _config(config, kwargs)
        with self.exclusive():
            if self.method.response_level:
                method = cast(ResponseLevel, self.method)
                return [method.generate(self, p, config, chat=chat) for p in prompts]
            chunks = self._decode(prompts, config, chat=chat, size=self.max_batch)
            outputs = {i: c.output for i, c in chunks if c.output is not None}
            return [outputs[i] for i in range(len(prompts))]

    def in_turn(self) -> bool:
        """Whether the calling thread holds this ensemble's turn (is inside :meth:`exclusive`)."""
        return self._owner == threading.get_ident()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """One generation at a time per ensemble: the members' KV caches and the step
        method's per-generation state are shared, so calls from several threads queue
        here (in arrival order of the lock) instead of corrupting each other.  A second
        generation started in the *same* thread while one is unfinished (an open stream)
        would wait for itself forever, so it is refused."""
        self._check_open()
        me = threading.get_ident()
        if self._owner == me:
            raise RuntimeError(
                "this Ensemble is already generating in this thread (an unfinished stream?): "
                "finish or close it before starting another generation"
            )
        with self._lock:
            self._check_open()  # closed while this call waited its turn
            self._owner = me
            try:
                yield
            finally:
                self._owner = None

    def _forward(self, contexts: list[Any], rows: list[int] | None = None, only: Sequence[int] | None = None) -> list[Any]:
        """Every member's next-token logits for its context (one entry per member; with
        ``only``, those members run and the others' entries are ``None``).

        Batched (``rows`` names the active rows): each entry is a list of contexts, one
        per row, and each member returns ``[len(rows), vocab]`` scores in one pass.
        With ``parallel`` the members run in the ensemble's threads and the step waits for
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

    def _first_subtoken(self, i: int, candidate: bytes) -> int | None:
        cache = self._subtoken_cache[i]
        if candidate not in cache:
            member = self.members[i]
            cache[candidate] = member.vocab.first_subtoken(candidate, member.tokenize)
        return cache[candidate]

    def _step(
        self, scores: list[Any], rows: list[_Row], *, batched: bool, ignore_eos: bool, consulted: Sequence[int]
    ) -> list[tuple[StepDistribution, list[Scores]]]:
        """Per active row: the step distribution and the consulted members' scores of that row.

        ``scores`` and the distributions' member rows follow ``consulted`` (every member, or
        the primary alone where the gate is closed; a lone member is stepped with weight 1).
        One row: each member's answer is that row's scores.  A batch: a method that
        declares ``batched`` steps every row at once on the members' own ``[rows, vocab]``
        scores (UniTE's top-k stays on the device); any other gets host copies, row by row.
        The weighting rules then re-mix each row's member distributions.
        """
        members = [self.members[i] for i in consulted]
        subtokens = [self._subtoken_fns[i] for i in consulted]
        alone = len(consulted) < len(self.members)

        def weights_of(row: _Row) -> np.ndarray:
            return np.ones(1) if alone else row.weights

        out: list[tuple[StepDistribution, list[Scores]]]
        if not batched:
            single = [as_scores(s) for s in scores]
            views = [MemberScores(m.name, lg, m.vocab, f) for m, lg, f in zip(members, single, subtokens)]
            out = [(self.method(views, weights_of(rows[0]), ignore_eos=ignore_eos), single)]
        elif self.method.batched:
            view = BatchView([m.name for m in members], [m.vocab for m in members], subtokens)
            weights = np.stack([weights_of(row) for row in rows])
            dists, gathered = self.method.step_batch(scores, view, weights, ignore_eos=ignore_eos)
            out = list(zip(dists, gathered))
        else:
            host = [_host_rows(s) for s in scores]
            out = []
            for b, row in enumerate(rows):
                logits: list[Scores] = [DenseScores(h[b]) for h in host]
                views = [MemberScores(m.name, lg, m.vocab, f) for m, lg, f in zip(members, logits, subtokens)]
                out.append((self.method(views, weights_of(row), ignore_eos=ignore_eos), logits))
        if self.weighting and not alone:
            for (dist, _), row in zip(out, rows):
                dist.probs = apply_rules(self.weighting, row.weights, dist.member_probs, self.primary)
        return out

    def _record(self, index: int, dist: StepDistribution, choice: int, consulted: Sequence[int]) -> StepRecord:
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

    def _append(self, tracks: list[TokenTrack], candidate: bytes, primary_logits: Scores | None) -> bytes:
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
            sub = self._first_subtoken(p, candidate)
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

    def _decode(
        self, prompts: Sequence[Prompt], config: GenerationConfig, *, chat: bool, size: int
    ) -> Iterator[tuple[int, StreamChunk]]:
        """The prompts through one :class:`DecodeBatch` of up to ``size`` rows: ``(prompt index,
        chunk)`` for each prompt's text as it becomes safe to show, and one final chunk per prompt
        carrying its output.

        Where every member takes a joining row without re-evaluating the others (``cheap_joins``:
        llama.cpp), the next prompt joins as soon as a row finishes; otherwise the prompts go in
        groups of ``size``.
        """
        size = min(size, len(prompts)) or 1
        joins = size > 1 and all(joins_cheaply(m) for m in self.members)
        tracks = [self.start_tracks(p, chat=chat) for p in prompts]  # every prompt is valid before any member forgets
        batch = DecodeBatch(self, batched=size > 1)
        index: dict[int, int] = {}  # row id -> prompt
        pending = list(range(len(prompts)))
        while pending or batch:
            if joins or not batch:  # fill the free rows (without cheap joins: only an empty batch)
                while pending and len(batch) < size:
                    i = pending.pop(0)
                    index[batch.add(tracks[i], config)] = i
            for rid, chunk in batch.step():
                yield index[rid], chunk

    def start_tracks(self, prompt: Prompt, *, chat: bool) -> list[TokenTrack]:
        """Each member's token track for ``prompt`` (raises on a prompt a member cannot take)."""
        return [start_track(m, prompt, chat=chat) for m in self.members]

    @property
    def max_batch(self) -> int:
        """Rows that decode together in one forward pass (1 when a member cannot batch)."""
        if not all(supports_batch(m) for m in self.members):
            return 1
        return min(batch_rows(m) for m in self.members)


class DecodeBatch:
    """The one decode loop: rows join, step together and leave.

    As in vLLM's engine (``add_request``, then ``step`` until nothing is left), a row is added
    with its own generation settings, every :meth:`step` runs one forward pass of each member
    over all active rows (a row added since the last step gets its prompt evaluated in that
    same pass) and then one ensemble step per row, and a row leaves when it finishes or is
    cancelled.  ``Ensemble.generate``, ``stream`` and ``generate_batch`` run a fixed set of
    rows through it; ``unite serve`` adds requests between steps (continuous batching).
    Use it inside ``Ensemble.exclusive()``: the members' KV state is the batch's.

    ``batched=False`` holds one row at a time and calls ``next_logits`` (members that keep
    one sequence, and outputs that must be a function of the prompt alone).
    """

    def __init__(self, ensemble: Ensemble, *, batched: bool) -> None:
        self.ensemble = ensemble
        self.batched = batched
        self.rows: dict[int, _Row] = {}
        self._ids = itertools.count()
        self._base = next(_calls) << 32  # batch row names, unique per batch (see BatchMember)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def capacity(self) -> int:
        """How many rows may be active at once."""
        return self.ensemble.max_batch if self.batched else 1

    def add(self, tracks: list[TokenTrack], config: GenerationConfig) -> int:
        """Add a row (from :meth:`Ensemble.start_tracks`); returns its id, in order of addition."""
        if len(self.rows) >= self.capacity:
            raise RuntimeError(f"the batch is full ({self.capacity} rows)")
        ens = self.ensemble
        if not self.rows:  # nothing is running: the members may now forget or keep their caches
            for m in ens.members:
                if not ens.prefix_cache:
                    reset_cache(m)
                start_sequence(m)  # the prompt is evaluated by a plan that depends on it alone
        row = _Row(tracks, config, ens.weights, ens.load_s)
        row.prompt_tokens = {m.name: len(t) for m, t in zip(ens.members, tracks)}
        if ens.method.needs_prepare:  # set-up that needs the members or the prompt
            t0 = time.perf_counter()
            weights = ens.method.prepare(ens.members, tracks, ens.primary)
            if weights is not None:  # this generation's own weights (PackLLM)
                row.weights = _checked_weights(weights, len(ens.members), ens.method.name)
            row.timing.prepare_s = time.perf_counter() - t0
        rid = next(self._ids)
        self.rows[rid] = row
        return rid

    def cancel(self, rid: int) -> None:
        """Drop a row (its client went away); the others go on undisturbed."""
        self.rows.pop(rid, None)

    def _forward(self, ids: list[int], only: Sequence[int] | None = None) -> list[Any]:
        ens = self.ensemble
        if not self.batched:
            return ens._forward([t.tokens for t in self.rows[ids[0]].tracks], only=only)
        contexts = [[self.rows[r].tracks[i].tokens for r in ids] for i in range(len(ens.members))]
        return ens._forward(contexts, rows=[self._base + r for r in ids], only=only)

    def _gated_forward(self, ids: list[int]) -> tuple[list[Any], np.ndarray]:
        """The primary first; the partners only if the gate opens for some row (a batch runs
        them over every row, so no row's sequence is dropped).  Returns the scores and, per
        row, whether it is ensembled this step."""
        ens = self.ensemble
        assert ens.gate is not None and ens.primary is not None
        p = ens.primary
        scores = self._forward(ids, only=[p])
        is_open = ens.gate.is_open(scores[p], len(ens.members[p].vocab))
        if is_open.any() and len(ens.members) > 1:
            partners = self._forward(ids, only=[i for i in range(len(ens.members)) if i != p])
            scores = [scores[p] if i == p else partners[i] for i in range(len(ens.members))]
        else:
            is_open[:] = False
        return scores, is_open

    def step(self) -> list[tuple[int, StreamChunk]]:
        """One forward pass and one ensemble step of every active row: ``(row id, chunk)``
        pairs, a row's last one carrying its output (the row has left the batch then)."""
        ens = self.ensemble
        ids = list(self.rows)
        if not ids:
            return []
        t_fwd = time.perf_counter()
        if ens.gate is None:
            scores, is_open = self._forward(ids), np.ones(len(ids), dtype=bool)
        else:
            scores, is_open = self._gated_forward(ids)
        now = time.perf_counter()
        out: list[tuple[int, StreamChunk]] = []
        stepping: list[int] = []  # positions in ids of the rows that step now
        for j, rid in enumerate(ids):
            row = self.rows[rid]
            if row.decode_t0 is None:  # its prompt was evaluated in this pass
                row.timing.prefill_s = now - t_fwd
                row.decode_t0 = now
            else:
                row.timing.members_s += now - t_fwd
            if len(row.steps) >= row.config.max_new_tokens:  # max_new_tokens == 0
                out.append((rid, self._finish(rid)))
            else:
                stepping.append(j)
        everyone = list(range(len(ens.members)))
        alone = [ens.primary] if ens.primary is not None else everyone
        # The step method takes one ignore_eos and one set of members per call.
        groups: dict[tuple[bool, bool], list[int]] = {}
        for j in stepping:
            groups.setdefault((self.rows[ids[j]].config.ignore_eos, bool(is_open[j])), []).append(j)
        for (ignore_eos, ensembled), group in groups.items():
            consulted = everyone if ensembled else alone
            part = [scores[i] for i in consulted]
            if self.batched and group != list(range(len(ids))):
                part = [s[group] for s in part]
            rows = [self.rows[ids[j]] for j in group]
            results = ens._step(part, rows, batched=self.batched, ignore_eos=ignore_eos, consulted=consulted)
            for j, (dist, logits) in zip(group, results):
                out.extend(self._advance(ids[j], dist, logits, consulted))
        return out

    def _advance(
        self, rid: int, dist: StepDistribution, logits: list[Scores], consulted: Sequence[int]
    ) -> list[tuple[int, StreamChunk]]:
        """Choose a row's candidate, append it to every member's track, and say what to show."""
        ens, row = self.ensemble, self.rows[rid]
        index = len(row.steps)
        choice = choose(dist.probs, row.config, row.rng)
        record = ens._record(index, dist, choice, consulted)
        names = [ens.names[i] for i in consulted]
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
        primary_logits = logits[list(consulted).index(ens.primary)] if ens.primary is not None else None
        row.output += ens._append(row.tracks, candidate, primary_logits)
        hit = row.stops.find(row.output, before)
        if hit is not None:
            row.output = row.output[: hit[0]]
            row.finish, row.stop_reason = "stop", hit[1]
            return [(rid, self._finish(rid))]
        safe = row.stops.safe_end(row.output)
        out = [(rid, StreamChunk(row.output[row.emitted : safe].decode("utf-8", errors="replace"), record))]
        row.emitted = max(row.emitted, safe)
        if index + 1 == row.config.max_new_tokens or any(len(t) >= m.n_ctx for m, t in zip(ens.members, row.tracks)):
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


class ResponseLevel(Protocol):
    """A method that declares ``response_level``: it answers whole prompts itself."""

    def generate(
        self, ensemble: Ensemble, prompt: Prompt, config: GenerationConfig, *, chat: bool = False
    ) -> GenerationOutput: ...


def _config(config: GenerationConfig | None, overrides: dict[str, Any]) -> GenerationConfig:
    if config is None:
        return GenerationConfig(**overrides)
    return replace(config, **overrides) if overrides else config


def _host_rows(scores: Any) -> np.ndarray:
    """A member's ``[rows, vocab]`` scores as a host float32 array (torch tensors copied out)."""
    if type(scores).__module__.startswith("torch"):
        return scores.float().cpu().numpy()
    return np.asarray(scores, dtype=np.float32)
