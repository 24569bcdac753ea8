"""What a step method sees and returns.

A step method is a pure function from the members' next-token scores to a
distribution over *candidates* (byte strings, plus one shared END).  Choosing from
that distribution (greedy or sampled) is :mod:`unite_llm.sampling`'s job, and
appending the choice is the decode loop's: each piece of the pipeline is one small
room, in the spirit of transformers' LogitsProcessor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..candidates import END as END  # re-exported: the step methods name candidates from here
from ..candidates import Candidate
from ..candidates import candidate_text as candidate_text
from ..scores import Scores, as_scores
from ..vocab import ByteVocab

if TYPE_CHECKING:
    from ..engine import Ensemble, GenerationOutput
    from ..members.base import Member
    from ..prompts import Prompt
    from ..sampling import GenerationConfig
    from ..sync import TokenTrack


@dataclass(frozen=True)
class MemberScores:
    """One member at one step: its next-token scores and how to read them as bytes."""

    name: str
    logits: Scores
    """Read through :class:`~unite_llm.scores.Scores` (ranking and id lookup); a numpy
    vector given here is wrapped as :class:`~unite_llm.scores.DenseScores`."""
    vocab: ByteVocab
    first_subtoken: Callable[[bytes], int | None]

    def __post_init__(self) -> None:
        object.__setattr__(self, "logits", as_scores(self.logits))


@dataclass
class StepDistribution:
    """A step method's answer: probabilities over candidates, with its working shown."""

    candidates: list[Candidate]
    probs: np.ndarray
    """Weighted ensemble probability of each candidate (sums to 1)."""
    member_probs: np.ndarray
    """``[n_members, n_candidates]``: each member's probabilities, renormalised."""
    rules: list[list[str]] = field(default_factory=list)
    """Per member and candidate: which rule gave its probability (``topk``, ``vocab``,
    ``subtoken``, ``end`` or ``none``)."""
    aligned: int = 0
    """How many tokens the method aligned across vocabularies this step (its cost)."""


@dataclass(frozen=True)
class BatchView:
    """What a batched step needs of the members, beside their ``[rows, vocab]`` scores."""

    names: Sequence[str]
    vocabs: Sequence[ByteVocab]
    first_subtokens: Sequence[Callable[[bytes], int | None]]


class StepMethod:
    """Base of the per-step ensembling rules (UniTE, GaC, ...), one small class each.

    A method is called once per step with every member's scores and the member weights,
    and returns a :class:`StepDistribution`; it never sees the decode loop.  What else
    the loop may do with it is *declared* by class attributes, read by
    :class:`~unite_llm.engine.Ensemble` and never guessed from the object:

    * ``needs_prepare``: call :meth:`prepare` once per generation (per row of a batch),
      after the prompt is tokenized and before prefill; its time is ``Timing.prepare_s``.
    * ``batched``: :meth:`step_batch` steps many rows at once on the members' own
      ``[rows, vocab]`` scores (UniTE: top-k on the device); without it a batch gets host
      copies and the method is called row by row.

    A method that produces whole answers itself is not a step method: it derives
    :class:`ResponseMethod` instead.
    """

    name: str = "?"
    k: int = 10
    needs_prepare: ClassVar[bool] = False
    batched: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Declarations must match the hooks, so a hook is never silently skipped: a class
        that writes its own per-step rule inherits ``batched`` only with its own ``step_batch``."""
        super().__init_subclass__(**kwargs)
        own = vars(cls)
        if "prepare" in own and not cls.needs_prepare:
            raise TypeError(f"{cls.__name__} defines prepare(): declare needs_prepare = True")
        if callable(getattr(cls, "generate", None)):
            raise TypeError(f"{cls.__name__} defines generate(): a method that answers whole prompts derives ResponseMethod")
        if "__call__" in own and "step_batch" not in own and "batched" not in own:
            cls.batched = False
        if cls.batched and cls.step_batch is StepMethod.step_batch:
            raise TypeError(f"{cls.__name__} declares batched = True: define step_batch()")

    def __call__(self, members: Sequence[MemberScores], weights: np.ndarray, *, ignore_eos: bool = False) -> StepDistribution:
        raise NotImplementedError(f"{type(self).__name__} defines no per-step rule")

    def prepare(self, members: Sequence[Member], tracks: Sequence[TokenTrack], primary: int | None) -> np.ndarray | None:
        """Per-generation set-up (``needs_prepare``); may return this generation's member
        weights (PackLLM), or ``None`` to keep the ensemble's."""
        return None

    def step_batch(
        self, scores: Sequence[Any], view: BatchView, weights: np.ndarray, *, ignore_eos: bool = False
    ) -> tuple[list[StepDistribution], list[list[Scores]]]:
        """Per row (``batched``): the distribution and each member's scores of that row.

        ``scores[i]`` is member i's ``[rows, vocab]`` array or tensor; ``weights`` is
        ``[rows, members]``.
        """
        raise NotImplementedError(f"{type(self).__name__} has no batched step")


class ResponseMethod:
    """Base of the response-level methods (``rank``): the method answers each prompt itself,
    using the ensemble's members as it likes, and is never stepped.  ``Ensemble.generate``,
    ``stream`` and ``generate_batch`` hand it each prompt inside the ensemble's turn."""

    name: str = "?"
    k: int = 10

    def generate(self, ensemble: Ensemble, prompt: Prompt, config: GenerationConfig, *, chat: bool = False) -> GenerationOutput:
        raise NotImplementedError(f"{type(self).__name__} defines no generate()")
