"""The public face of the engine: :class:`Ensemble` (as vLLM's ``LLM`` over its engine).

An :class:`Ensemble` loads or takes members, builds an
:class:`~unite_llm.engine.core.EngineCore` over them and runs ``generate``, ``stream`` and
``generate_batch`` through the one decode loop (:func:`~unite_llm.engine.batch.drive`).
A method that answers whole prompts (:class:`~unite_llm.methods.base.ResponseMethod`:
``rank``) is handed each prompt instead, inside the same turn.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, cast, overload

import numpy as np

from ..errors import InvalidConfigError, InvalidInputError
from ..loading import load_members
from ..members import Member
from ..methods import make_method
from ..methods.base import ResponseMethod, StepMethod
from ..methods.gate import Gate, make_gate
from ..methods.weighting import WeightRule, make_rules
from ..models import DEFAULT_ENSEMBLE, DEFAULT_SETTINGS
from ..prompts import Prompt
from ..sampling import GenerationConfig
from ..sync import TokenTrack
from .batch import PromptFeed, drive
from .checks import check_distinct, check_primary, checked_specs, normalised_weights
from .core import EngineCore
from .outputs import GenerationOutput, StreamChunk


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
        method: str | StepMethod | ResponseMethod = "unite",
        primary: str | int | None = None,
        load_s: float = 0.0,
        parallel: bool | None = None,
        prefix_cache: bool = True,
        gate: Gate | float | dict[str, Any] | None = None,
        weighting: Sequence[str | WeightRule] | str | None = None,
    ) -> None:
        self.method = make_method(method, k=k) if isinstance(method, str) else method
        if not isinstance(self.method, StepMethod | ResponseMethod):
            raise InvalidConfigError(
                f"method {self.method!r} is not a StepMethod (or a ResponseMethod): subclass unite_llm.methods.StepMethod "
                "(it declares its hooks)"
            )
        self.engine = EngineCore(
            members,
            self.method if isinstance(self.method, StepMethod) else None,
            weights=weights,
            primary=primary,
            load_s=load_s,
            parallel=parallel,
            prefix_cache=prefix_cache,
            gate=make_gate(gate),
            weighting=make_rules(weighting),
        )

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
        specs = checked_specs(specs)
        make_method(method, k=k)  # validate settings before the slow part
        make_gate(gate)
        make_rules(weighting)
        normalised_weights(weights, len(specs))
        check_distinct(specs)
        check_primary(primary, specs if "name" not in member_options else [])
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

    # -- what the engine holds ----------------------------------------------------------

    @property
    def members(self) -> list[Member]:
        return self.engine.members

    @property
    def names(self) -> list[str]:
        return self.engine.names

    @property
    def weights(self) -> np.ndarray:
        """The members' weights, normalised to sum to 1."""
        return self.engine.weights

    @property
    def primary(self) -> int | None:
        """The primary member's index (the output follows its tokens), or None."""
        return self.engine.primary

    @property
    def gate(self) -> Gate | None:
        return self.engine.gate

    @property
    def weighting(self) -> list[WeightRule]:
        return self.engine.weighting

    @property
    def parallel(self) -> bool:
        """Whether the members step in threads."""
        return self.engine.parallel

    @property
    def prefix_cache(self) -> bool:
        """Whether each member keeps its KV cache across generations (settable)."""
        return self.engine.prefix_cache

    @prefix_cache.setter
    def prefix_cache(self, on: bool) -> None:
        self.engine.prefix_cache = bool(on)

    @property
    def load_s(self) -> float:
        return self.engine.load_s

    @property
    def max_batch(self) -> int:
        """Rows that decode together in one forward pass (1 when a member cannot batch)."""
        return self.engine.max_batch

    def start_tracks(self, prompt: Prompt, *, chat: bool) -> list[TokenTrack]:
        """Each member's token track for ``prompt`` (raises on a prompt a member cannot take)."""
        return self.engine.start_tracks(prompt, chat=chat)

    # -- life cycle -----------------------------------------------------------------------

    def close(self) -> None:
        """Free the members (after a generation running in another thread has finished).

        Closing twice is harmless; any use after it raises ``RuntimeError``."""
        self.engine.close()

    @property
    def closed(self) -> bool:
        return self.engine.closed

    def __enter__(self) -> Ensemble:
        self.engine.check_open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def in_turn(self) -> bool:
        """Whether the calling thread holds this ensemble's turn (is inside :meth:`exclusive`)."""
        return self.engine.in_turn()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """One generation at a time per ensemble: the members' KV caches and the step
        method's per-generation state are shared, so calls from several threads queue
        here (in arrival order of the lock) instead of corrupting each other.  A second
        generation started in the *same* thread while one is unfinished (an open stream)
        would wait for itself forever, so it is refused."""
        with self.engine.exclusive():
            yield

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
        self.engine.check_open()
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
        self.engine.check_open()
        if _is_batch(prompt):
            raise InvalidInputError("stream takes one prompt; for a list of prompts use generate or generate_batch")
        config = _config(config, kwargs)
        with self.exclusive():
            if isinstance(self.method, ResponseMethod):  # rank: whole answers, made by the method itself
                out = self.method.generate(self, prompt, config, chat=chat)
                yield StreamChunk(out.text, out.steps[-1] if out.steps else None, out)
                return
            for results in self._decode([prompt], config, chat=chat, size=1):
                for _, chunk in results:
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
        self.engine.check_open()
        config = _config(config, kwargs)
        with self.exclusive():
            if isinstance(self.method, ResponseMethod):
                return [self.method.generate(self, p, config, chat=chat) for p in prompts]
            outputs = {
                i: c.output
                for results in self._decode(prompts, config, chat=chat, size=self.max_batch)
                for i, c in results
                if c.output is not None
            }
            return [outputs[i] for i in range(len(prompts))]

    def _decode(
        self, prompts: Sequence[Prompt], config: GenerationConfig, *, chat: bool, size: int
    ) -> Iterator[list[tuple[int, StreamChunk]]]:
        """The prompts through the decode loop in batches of up to ``size`` rows, keyed by their
        position.  Where every member takes a joining row without re-evaluating the others
        (``cheap_joins``: llama.cpp), the next prompt joins as soon as a row finishes; otherwise
        the prompts go in groups of ``size``."""
        size = min(size, len(prompts)) or 1
        tracks = [self.engine.start_tracks(p, chat=chat) for p in prompts]  # every prompt is valid before any member forgets
        feed = PromptFeed([(i, t, config) for i, t in enumerate(tracks)])
        joins = size > 1 and self.engine.joins_cheaply
        return drive(self.engine, feed, size=size, batched=size > 1, joins=joins)


def _config(config: GenerationConfig | None, overrides: dict[str, Any]) -> GenerationConfig:
    if config is None:
        return GenerationConfig(**overrides)
    return replace(config, **overrides) if overrides else config
