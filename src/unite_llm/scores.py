"""The logits contract: what a step method may ask of a member's next-token scores.

A member's scores for one step come in three shapes: a full float32 vector in this
process (llama.cpp, transformers), a small stand-in for a member in another process
that fetches ids on demand (:class:`~unite_llm.members.remote.RemoteLogits`), and the few
numbers of one row that left a device-side batch
(:class:`~unite_llm.methods.unite_batch.GatheredLogits`).  UniTE reads every one of them
through the same two operations, so the step never needs to know which it holds:

* ``top_k_ids(vocab, k, ignore_eos=)``: rank where the numbers live;
* ``at(ids)``: the scores of a few ids, in one lookup.

Methods that need the whole distribution (GaC, DeePEn) ask for it with :func:`dense`,
which a remote member answers with one full transfer and a gathered row refuses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .vocab import ByteVocab

_SPARE = 16  # extra ids gathered so that skipped control tokens rarely force a second pass


@runtime_checkable
class Scores(Protocol):
    """One member's next-token scores at one step (log-probabilities up to a constant)."""

    approximated: Sequence[str]
    """Texts of the candidates whose score is only a bound (remote members); empty when exact."""

    def top_k_ids(self, vocab: ByteVocab, k: int, *, ignore_eos: bool = False) -> list[int]:
        """The ``k`` most likely ids that are text or end-of-generation, best first."""
        ...

    def at(self, ids: Sequence[int]) -> np.ndarray:
        """The scores of ``ids`` (float64, in order)."""
        ...


class DenseScores:
    """A full score vector held in this process (a member's logits, or one row of a batch).

    The vector may be a view into the backend's buffer, valid until that member's next call,
    like the logits it wraps.
    """

    approximated: Sequence[str] = ()

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def top_k_ids(self, vocab: ByteVocab, k: int, *, ignore_eos: bool = False) -> list[int]:
        """Selection by threshold: every id within ``delta`` of the max is gathered with one
        vectorised comparison (~0.1 ms on 262k logits, against ~2 ms for ``argpartition``),
        and ``delta`` doubles until enough ids are in.  Ties keep the lower id first, as
        ``argmax`` does."""

        def allowed(tid: int) -> bool:
            return vocab.emittable[tid] or (not ignore_eos and tid in vocab.eog_ids)

        n = len(vocab)
        scores = self.array[:n]
        top = float(scores.max())
        need = k + _SPARE
        delta = 4.0
        while True:
            ids = np.flatnonzero(scores >= top - delta) if np.isfinite(top) else np.arange(n)
            order = ids[np.argsort(-scores[ids], kind="stable")]
            picked: list[int] = []
            for tid in order.tolist():  # best first; stop as soon as k are in
                if allowed(tid):
                    picked.append(tid)
                    if len(picked) == k:
                        break
            if len(picked) == k or len(ids) == n or delta > 1e30:
                return picked
            delta = delta * 4 if len(ids) < need else delta * 2

    def at(self, ids: Sequence[int]) -> np.ndarray:
        return self.array[np.asarray(ids, dtype=np.intp)].astype(np.float64)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        out = self.array if dtype is None else self.array.astype(dtype)
        return out.copy() if copy and out is self.array else out

    def __getitem__(self, index: Any) -> Any:  # the vector's own indexing, for methods written against arrays
        return self.array[index]

    def __len__(self) -> int:
        return len(self.array)


def as_scores(logits: Scores | np.ndarray) -> Scores:
    """A member's raw answer (an array, or an object already meeting the contract) as :class:`Scores`."""
    if isinstance(logits, np.ndarray):
        return DenseScores(logits)
    if isinstance(logits, DenseScores):  # the per-step case: skip the slower Protocol check
        return logits
    if not isinstance(logits, Scores):
        raise TypeError(f"member scores must be a numpy array or meet the Scores contract, got {type(logits).__name__}")
    return logits


def dense(scores: Scores | np.ndarray, size: int) -> np.ndarray:
    """The first ``size`` scores as one vector, for methods that need the whole distribution.

    A remote member sends its full vector (one large transfer); a gathered batch row holds
    only the union's scores and raises ``TypeError``.
    """
    if isinstance(scores, DenseScores):
        return scores.array[:size]
    if isinstance(scores, np.ndarray):
        return scores[:size]
    if not hasattr(scores, "__array__"):
        raise TypeError(f"{type(scores).__name__} holds only some scores; this method needs the full vector")
    return np.asarray(scores)[:size]


def top_k_ids(logits: Scores | np.ndarray, vocab: ByteVocab, k: int, *, ignore_eos: bool = False) -> list[int]:
    """``k`` best ids of ``logits`` (an array or :class:`Scores`), ranked where the numbers live."""
    return as_scores(logits).top_k_ids(vocab, k, ignore_eos=ignore_eos)
