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
from typing import Final, Protocol

import numpy as np

from ..vocab import ByteVocab


class _End:
    """The shared end-of-sequence candidate (every member's EOG tokens, merged)."""

    _instance: _End | None = None

    def __new__(cls) -> _End:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "END"

    def __reduce__(self) -> str:  # pickles (Ray, multiprocessing) as the same singleton
        return "END"


END: Final = _End()
Candidate = bytes | _End


def candidate_text(candidate: Candidate) -> str:
    """A printable form of a candidate for logs and JSON (END as ``<END>``)."""
    if candidate is END:
        return "<END>"
    assert isinstance(candidate, bytes)
    return candidate.decode("utf-8", errors="backslashreplace")


@dataclass(frozen=True)
class MemberScores:
    """One member at one step: its next-token logits and how to read them as bytes."""

    name: str
    logits: np.ndarray
    """The full vector, or a remote member's small stand-in with ``top_k_ids`` and ``at``
    (see :func:`logits_at`)."""
    vocab: ByteVocab
    first_subtoken: Callable[[bytes], int | None]


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


class StepMethod(Protocol):
    """A per-step ensembling rule (UniTE, GaC, ...).

    Two optional hooks, looked up with ``getattr`` by :class:`~unite_llm.engine.Ensemble`:

    * ``prepare(ensemble, tracks)``: called once per generation after the prompt is
      tokenized and before prefill, with the ensemble and each member's token track.
      GaC and DeePEn build their vocabulary maps there (cached across generations),
      PackLLM computes its per-prompt weights; the time goes to ``Timing.prepare_s``.
    * ``generate(ensemble, prompt, config, *, chat)``: a *response-level* method (rank)
      that produces whole answers itself; ``Ensemble.generate/stream`` hand over to it.
    """

    name: str

    def __call__(self, members: Sequence[MemberScores], weights: np.ndarray, *, ignore_eos: bool = False) -> StepDistribution: ...


def logits_at(logits: object, ids: Sequence[int]) -> np.ndarray:
    """The scores of ``ids`` (float64), in one lookup.

    A local member's logits are an array.  A remote member's are an object with
    ``at(ids)`` that fetches (or bounds) just those ids, so a step costs one small
    request per member instead of a vocabulary-sized vector.
    """
    if isinstance(logits, np.ndarray):
        return logits[np.asarray(ids, dtype=np.intp)].astype(np.float64)
    return np.asarray(logits.at(ids), dtype=np.float64)  # type: ignore[attr-defined]


def logsumexp(values: Sequence[float]) -> float:
    """Log of the summed probabilities (merging duplicate ids), in float64."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return float("-inf")
    top = arr.max()
    if not np.isfinite(top):
        return float(top)
    return float(top + np.log(np.exp(arr - top).sum()))


def softmax(scores: np.ndarray) -> np.ndarray:
    """Renormalise log-scores over the candidates (rows); an all -inf row stays zero."""
    scores = np.asarray(scores, dtype=np.float64)
    top = scores.max(axis=-1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    exp = np.exp(scores - top)
    total = exp.sum(axis=-1, keepdims=True)
    return np.divide(exp, total, out=np.zeros_like(exp), where=total > 0)
