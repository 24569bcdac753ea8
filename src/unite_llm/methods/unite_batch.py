"""UniTE over a batch of rows, with the vocabulary-sized work left on the device.

The single-row step (:mod:`unite_llm.methods.unite`) reads a host copy of each
member's logits.  For a batch on a GPU that copy is the expensive part (262k floats per
row per member per step), and almost all of it is thrown away: the step needs only each
member's top-k and its scores of the few union candidates.  So, per member:

1. mask ids that can never be candidates (control tokens; END ids under ignore_eos)
   and take ``topk`` over the ``[B, V]`` scores on the device: ``B x k`` ids come back;
2. form each row's union on the host (bytes, exactly as the single step does);
3. gather every score the step will read (the ids of each candidate, the EOG ids, the
   first sub-token of candidates outside the vocabulary: the single step's own rule tree,
   :func:`~unite_llm.methods.unite.candidate_ids`) in one indexed read: those few numbers
   are all that leave the device;
4. finish with the single step's own combination (:func:`~unite_llm.methods.unite.combine`),
   so a row's distribution is the one UniTE computes from the same logits.

This module holds the device-side operations (steps 1 and 3, and the gather plan);
:class:`~unite_llm.methods.unite.BatchedUniTE` puts them together beside the single step.
Works on numpy ``[B, V]`` arrays too (members that score rows one by one).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..scores import DenseScores
from ..vocab import ByteVocab

FirstSubtoken = Callable[[bytes], int | None]


class GatheredLogits:
    """The few logits of one row that left the device (a :class:`~unite_llm.scores.Scores`).

    Reading an id that was not gathered is a bug in the gather plan, so it raises; so does
    asking for a top-k other than the one ranked on the device.
    """

    approximated: Sequence[str] = ()

    def __init__(self, values: dict[int, float], top: Sequence[int] = (), key: tuple[int, bool] = (0, False)) -> None:
        self.values = values
        self.top = list(top)
        self.key = key

    def top_k_ids(self, vocab: ByteVocab, k: int, *, ignore_eos: bool = False) -> list[int]:
        if (k, ignore_eos) != self.key:
            raise KeyError(f"this row was ranked on the device for k={self.key[0]}, ignore_eos={self.key[1]}")
        return list(self.top)

    def at(self, ids: Sequence[int]) -> np.ndarray:
        return np.array([self.values[int(t)] for t in ids], dtype=np.float64)


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


class DeviceStep:
    """The device-side half of UniTE's batched step (see the module docstring)."""

    def __init__(self, k: int) -> None:
        self.k = k
        self._allowed: dict[tuple[int, bool, str], tuple[Any, Any, int]] = {}

    def _allowed_mask(self, vocab: ByteVocab, ignore_eos: bool, like: Any) -> tuple[Any, int]:
        """Boolean ``[V]`` mask of ids that may be candidates and how many there are, cached per device."""
        key = (id(vocab), ignore_eos, str(getattr(like, "device", "numpy")))
        owner, mask, count = self._allowed.get(key, (None, None, 0))
        if owner is not vocab:  # a new vocabulary (an id can be reused once the old one is freed)
            ok: Any = np.asarray(vocab.emittable, dtype=bool)
            if not ignore_eos:
                ok[list(vocab.eog_ids)] = True
            count = int(ok.sum())
            if _is_torch(like):
                import torch

                ok = torch.from_numpy(ok).to(like.device)
            mask = ok
            self._allowed[key] = (vocab, mask, count)
        return mask, count

    def top_ids(self, scores: Any, vocab: ByteVocab, ignore_eos: bool) -> np.ndarray:
        """``[B, k']`` ids of each row's top-k allowed tokens, best first."""
        n = len(vocab)
        scores = scores[:, :n]
        allowed, n_allowed = self._allowed_mask(vocab, ignore_eos, scores)
        k = min(self.k, n_allowed)
        if _is_torch(scores):
            masked = scores.masked_fill(~allowed, float("-inf"))
            return masked.topk(k, dim=-1).indices.cpu().numpy()
        # Host rows: the single-row selection by threshold (a fraction of a full argpartition
        # over [B, V], and the same ids, ties to the lower id, as an unbatched step picks).
        rows = np.asarray(scores)
        return np.array([DenseScores(row).top_k_ids(vocab, k, ignore_eos=ignore_eos) for row in rows], dtype=np.int64)

    @staticmethod
    def gather(scores: Any, pairs: list[tuple[int, int]]) -> list[float]:
        if not pairs:
            return []
        rows = [b for b, _ in pairs]
        ids = [t for _, t in pairs]
        if _is_torch(scores):
            import torch

            index_rows = torch.tensor(rows, device=scores.device)
            index_ids = torch.tensor(ids, device=scores.device)
            return scores[index_rows, index_ids].double().cpu().tolist()
        return np.asarray(scores)[rows, ids].astype(np.float64).tolist()
