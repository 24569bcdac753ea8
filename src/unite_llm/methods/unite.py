"""UniTE: union top-k ensembling (Yao et al., ICLR 2025, Algorithm 1).

Read beside the paper::

    for each model i:            V_i^k = TopK(p_i, k)                 -> top_k_ids
    V_u = U_i V_i^k              (as byte strings, END shared)        -> union
    for each model i, token t in V_u:
        t in V_i^k        -> p_i(t)                                   rule "topk"
        t in V_i          -> p_i(t)                                   rule "vocab"
        otherwise         -> p_i(first sub-token of Tokenize_i(t))    rule "subtoken"
    p_i <- p_i / sum_{t in V_u} p_i(t)                                (renormalise)
    p   <- sum_i w_i p_i                                              (weighted average)
    next = argmax p                                                   (sampling.choose)

Two details the paper leaves open, decided here:

* Several ids with identical bytes (Gemma's ``\\n`` and ``<0x0A>``) are one candidate;
  the member's probability of it is the *sum* over those ids.
* Control tokens (empty bytes) are not text and never candidates; every member's
  end-of-generation ids form one shared END candidate with their summed probability.

Logits are used as they come: the softmax normaliser cancels in the renormalisation, so
no pass over the full vocabulary is needed beyond the top-k selection.

The step reads a member's logits through the two operations of
:class:`~unite_llm.scores.Scores` only: ranking (``top_k_ids``) and looking up ids (``at``,
once per member per step).  A member on another machine returns a small object meeting the
same contract instead of the full vector, so only the top-k and the union's ids cross the
wire (:mod:`unite_llm.members.ray_member`, :mod:`unite_llm.members.openai`); a batch on a
GPU keeps its vocabulary-sized work on the device (:mod:`unite_llm.methods.unite_batch`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..candidates import candidate_of
from ..mathops import logsumexp, softmax
from ..scores import Scores, top_k_ids
from ..vocab import ByteVocab
from .base import END, BatchView, Candidate, MemberScores, StepDistribution, StepMethod
from .unite_batch import DeviceStep, FirstSubtoken, GatheredLogits


def union(top: Sequence[Sequence[Candidate]]) -> list[Candidate]:
    """Union of the members' candidates, first appearance first (deterministic order)."""
    seen: dict[Candidate, None] = {}
    for cands in top:
        for cand in cands:
            seen.setdefault(cand, None)
    return list(seen)


def candidate_ids(
    vocab: ByteVocab, first_subtoken: FirstSubtoken, cand: Candidate, in_top: bool, ignore_eos: bool
) -> tuple[tuple[int, ...], str]:
    """The rule tree: the ids whose summed probability is a member's score of one candidate,
    and the rule.  The single step reads them (:func:`member_log_scores`), the batched step
    gathers them on the device first (:class:`BatchedUniTE`)."""
    if cand is END:
        if ignore_eos or not vocab.eog_ids:
            return (), "none"
        return tuple(sorted(vocab.eog_ids)), "end"
    assert isinstance(cand, bytes)
    ids = vocab.ids_of(cand)
    if ids:
        return ids, "topk" if in_top else "vocab"
    sub = first_subtoken(cand)
    if sub is None:
        return (), "none"
    return (sub,), "subtoken"


def member_ids(member: MemberScores, cand: Candidate, in_top: bool, ignore_eos: bool) -> tuple[tuple[int, ...], str]:
    """:func:`candidate_ids` for one member's scores."""
    return candidate_ids(member.vocab, member.first_subtoken, cand, in_top, ignore_eos)


def member_log_scores(
    member: MemberScores, cands: Sequence[Candidate], own: set[Candidate], ignore_eos: bool
) -> list[tuple[float, str]]:
    """One member's (unnormalised) log-probability of each candidate, and the rule used."""
    wanted = [member_ids(member, c, c in own, ignore_eos) for c in cands]
    flat = [t for ids, _ in wanted for t in ids]
    values = member.logits.at(flat).tolist() if flat else []
    out, pos = [], 0
    for ids, rule in wanted:
        out.append((logsumexp(values[pos : pos + len(ids)]), rule))
        pos += len(ids)
    return out


def top_candidates(ids: Sequence[int], vocab: ByteVocab) -> list[Candidate]:
    """A member's top-k ids as candidates, best first."""
    return [candidate_of(int(t), vocab) for t in ids]


def combine(
    members: Sequence[MemberScores],
    cands: Sequence[Candidate],
    tops: Sequence[Sequence[Candidate]],
    weights: np.ndarray,
    ignore_eos: bool,
) -> StepDistribution:
    """UniTE's distribution over the union ``cands`` of the members' top-k ``tops``: each
    member's scores by the rule tree, renormalised over the union, then the weighted average
    (``weights`` is ``[members]``)."""
    scores = np.empty((len(members), len(cands)))
    rules: list[list[str]] = []
    for i, member in enumerate(members):
        row = member_log_scores(member, cands, set(tops[i]), ignore_eos)
        scores[i] = [s for s, _ in row]
        rules.append([r for _, r in row])
    member_probs = softmax(scores)
    probs = np.asarray(weights, dtype=np.float64) @ member_probs
    return StepDistribution(list(cands), probs / probs.sum(), member_probs, rules, aligned=len(cands))


class UniTE(StepMethod):
    """The UniTE step method; ``k`` is the per-member top-k (10 in the paper)."""

    name = "unite"
    batched = True

    def __init__(self, k: int = 10) -> None:
        self.k = k
        self._batched: BatchedUniTE | None = None

    def __call__(self, members: Sequence[MemberScores], weights: np.ndarray, *, ignore_eos: bool = False) -> StepDistribution:
        tops = [top_candidates(m.logits.top_k_ids(m.vocab, self.k, ignore_eos=ignore_eos), m.vocab) for m in members]
        return combine(members, union(tops), tops, weights, ignore_eos)

    def step_batch(
        self, scores: Sequence[Any], view: BatchView, weights: np.ndarray, *, ignore_eos: bool = False
    ) -> tuple[list[StepDistribution], list[list[Scores]]]:
        """Every row at once, top-k where the scores live (:class:`BatchedUniTE`)."""
        if self._batched is None or self._batched.k != self.k:
            self._batched = BatchedUniTE(self.k)
        dists, gathered = self._batched(scores, view.vocabs, view.names, view.first_subtokens, weights, ignore_eos=ignore_eos)
        return dists, [list(row) for row in gathered]


class BatchedUniTE(DeviceStep):
    """UniTE's step for ``B`` rows at once: the device-side top-k and gather of
    :mod:`unite_llm.methods.unite_batch`, finished row by row with the rules above, so a
    row's distribution is the one :class:`UniTE` computes from the same logits."""

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
        """Per row: the step distribution, and each member's gathered logits (for primary mode).

        ``weights`` is ``[members]`` (every row alike) or ``[rows, members]``.
        """
        n_members = len(scores)
        n_rows = int(scores[0].shape[0])
        top_ids: list[list[list[int]]] = []  # [member][row] -> ids, best first
        tops: list[list[list[Candidate]]] = []  # the same as candidates
        for s, vocab in zip(scores, vocabs):
            ids = self.top_ids(s, vocab, ignore_eos).tolist()
            top_ids.append(ids)
            tops.append([top_candidates(row, vocab) for row in ids])
        cands = [union([tops[i][b] for i in range(n_members)]) for b in range(n_rows)]

        gathered: list[list[GatheredLogits]] = []
        for i, (s, vocab) in enumerate(zip(scores, vocabs)):
            pairs: list[tuple[int, int]] = []
            for b in range(n_rows):
                for cand in cands[b]:
                    ids, _ = candidate_ids(vocab, first_subtokens[i], cand, False, ignore_eos)
                    pairs.extend((b, t) for t in ids)
            values = self.gather(s, pairs)
            per_row: list[dict[int, float]] = [{} for _ in range(n_rows)]
            for (b, t), v in zip(pairs, values):
                per_row[b][t] = v
            gathered.append([GatheredLogits(d, top_ids[i][b], (self.k, ignore_eos)) for b, d in enumerate(per_row)])

        w = np.asarray(weights, dtype=np.float64)
        dists = [
            combine(
                [MemberScores(names[i], gathered[i][b], vocabs[i], first_subtokens[i]) for i in range(n_members)],
                cands[b],
                [tops[i][b] for i in range(n_members)],
                w[b] if w.ndim == 2 else w,
                ignore_eos,
            )
            for b in range(n_rows)
        ]
        return dists, [[gathered[i][b] for i in range(n_members)] for b in range(n_rows)]


__all__ = [
    "BatchedUniTE",
    "UniTE",
    "candidate_ids",
    "candidate_of",
    "combine",
    "member_log_scores",
    "top_k_ids",
    "union",
]
