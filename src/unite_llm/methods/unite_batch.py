"""UniTE over a batch of rows, with the vocabulary-sized work left on the device.

The single-row step (:mod:`unite_llm.methods.unite`) reads a host copy of each
member's logits.  For a batch on a GPU that copy is the expensive part (262k floats per
row per member per step), and almost all of it is thrown away: the step needs only each
member's top-k and its scores of the few union candidates.  So, per member:

1. mask ids that can never be candidates (control tokens; END ids under ignore_eos)
   and take ``topk`` over the ``[B, V]`` scores on the device: ``B x k`` ids come back;
2. form each row's union on the host (bytes, exactly as the single step does);
3. gather every score the step will read (the ids of each candidate, the EOG ids, the
   first sub-token of candidates outside the vocabulary) in one indexed read: those
   few numbers are all that leave the device;
4. finish with the single step's own rules (:func:`member_log_score`), so a row's
   distribution is the one UniTE computes from the same logits.

Works on numpy ``[B, V]`` arrays too (members that score rows one by one).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..vocab import ByteVocab
from .base import END, Candidate, MemberScores, StepDistribution, softmax
from .unite import candidate_of, member_log_score, union

FirstSubtoken = Callable[[bytes], int | None]


class GatheredLogits:
    """The few logits of one row that left the device, indexable like the full vector.

    Reading an id that was not gathered is a bug in the gather plan, so it raises.
    """

    def __init__(self, values: dict[int, float]) -> None:
        self.values = values

    def __getitem__(self, tid: int) -> float:
        return self.values[int(tid)]

    def at(self, ids: Any) -> list[float]:
        """The scores of ``ids`` (the lookup :func:`~unite_llm.methods.base.logits_at` uses)."""
        return [self.values[int(t)] for t in ids]


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


class BatchedUniTE:
    """UniTE's step for ``B`` rows at once (see the module docstring)."""

    def __init__(self, k: int) -> None:
        self.k = k
        self._allowed: dict[tuple[int, bool, str], Any] = {}

    def _allowed_mask(self, vocab: ByteVocab, ignore_eos: bool, like: Any) -> Any:
        """Boolean ``[V]`` mask of ids that may be candidates, cached per device."""
        key = (id(vocab), ignore_eos, str(getattr(like, "device", "numpy")))
        mask = self._allowed.get(key)
        if mask is None:
            ok = np.asarray(vocab.emittable, dtype=bool)
            if not ignore_eos:
                ok[list(vocab.eog_ids)] = True
            if _is_torch(like):
                import torch

                ok = torch.from_numpy(ok).to(like.device)
            mask = self._allowed[key] = ok
        return mask

    def _top_ids(self, scores: Any, vocab: ByteVocab, ignore_eos: bool) -> np.ndarray:
        """``[B, k']`` ids of each row's top-k allowed tokens, best first."""
        n = len(vocab)
        scores = scores[:, :n]
        allowed = self._allowed_mask(vocab, ignore_eos, scores)
        k = min(self.k, int(allowed.sum()))
        if _is_torch(scores):
            masked = scores.masked_fill(~allowed, float("-inf"))
            return masked.topk(k, dim=-1).indices.cpu().numpy()
        masked = np.where(allowed, scores, -np.inf)
        part = np.argpartition(-masked, k - 1, axis=-1)[:, :k]
        order = np.argsort(-np.take_along_axis(masked, part, axis=-1), axis=-1, kind="stable")
        return np.take_along_axis(part, order, axis=-1)

    @staticmethod
    def _gather(scores: Any, pairs: list[tuple[int, int]]) -> list[float]:
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

    def __call__(
        self,
        scores: Sequence[Any],
        vocabs: Sequence[ByteVocab],
        names: Sequence[str],
        first_subtokens: Sequence[FirstSubtoken],
        weights: np.ndarray,
        *,
        ignore_eos: bool = False,
    ) -> tuple[list[StepDistribution], list[list[GatheredLogits]]]:
        """Per row: the step distribution, and each member's gathered logits (for primary mode)."""
        n_members = len(scores)
        n_rows = int(scores[0].shape[0])
        tops: list[list[list[Candidate]]] = []  # [member][row] -> candidates, best first
        for s, vocab in zip(scores, vocabs):
            ids = self._top_ids(s, vocab, ignore_eos)
            tops.append([[candidate_of(int(t), vocab) for t in row] for row in ids.tolist()])
        cands = [union([tops[i][b] for i in range(n_members)]) for b in range(n_rows)]

        gathered: list[list[GatheredLogits]] = []
        for i, (s, vocab) in enumerate(zip(scores, vocabs)):
            pairs: list[tuple[int, int]] = []
            for b in range(n_rows):
                for cand in cands[b]:
                    pairs.extend((b, t) for t in self._needed(cand, vocab, first_subtokens[i], ignore_eos))
            values = self._gather(s, pairs)
            per_row: list[dict[int, float]] = [{} for _ in range(n_rows)]
            for (b, t), v in zip(pairs, values):
                per_row[b][t] = v
            gathered.append([GatheredLogits(d) for d in per_row])

        dists: list[StepDistribution] = []
        w = np.asarray(weights, dtype=np.float64)
        for b in range(n_rows):
            table = np.empty((n_members, len(cands[b])))
            rules: list[list[str]] = []
            for i in range(n_members):
                view = MemberScores(names[i], gathered[i][b], vocabs[i], first_subtokens[i])  # type: ignore[arg-type]
                own = set(tops[i][b])
                row = [member_log_score(view, c, c in own, ignore_eos) for c in cands[b]]
                table[i] = [v for v, _ in row]
                rules.append([r for _, r in row])
            member_probs = softmax(table)
            probs = w @ member_probs
            dists.append(StepDistribution(cands[b], probs / probs.sum(), member_probs, rules, aligned=len(cands[b])))
        return dists, [[gathered[i][b] for i in range(n_members)] for b in range(n_rows)]

    @staticmethod
    def _needed(cand: Candidate, vocab: ByteVocab, first_subtoken: FirstSubtoken, ignore_eos: bool) -> list[int]:
        """The ids whose scores :func:`member_log_score` will read for ``cand``."""
        if cand is END:
            return [] if ignore_eos else sorted(vocab.eog_ids)
        assert isinstance(cand, bytes)
        ids = vocab.ids_of(cand)
        if ids:
            return list(ids)
        sub = first_subtoken(cand)
        return [] if sub is None else [sub]
