"""GaC: full union-vocabulary ensembling (Yu et al. 2024, "Breaking the Ceiling of the LLM
Community by Treating Token Generation as a Classification for Ensembling").

The baseline UniTE argues against: every member's *whole* distribution is mapped into the
union of all members' vocabularies and averaged there, every step::

    V_u      = U_i V_i                  (as byte strings; END shared)     -> UnionVocab (once)
    q_i      = scatter(softmax(l_i))    (|V_i| -> |V_u|, duplicates summed) -> np.bincount
    p        = sum_i w_i q_i
    next     = argmax p over all of V_u

The id -> union-index maps are built once per member set and cached on the method (the
one-time set-up cost GaC pays; ``Timing.prepare_s`` shows it).  Each step then costs a
full softmax and a scatter of every member's vocabulary: ``aligned`` is ``|V_u|``, against
UniTE's ~15.

The byte-level rules are UniTE's (:mod:`unite_llm.methods.unite`): ids with identical
bytes merge by summing, control tokens (no bytes) are not text and are dropped (each
member is renormalised over what remains), end-of-generation ids all map to END.

Only the ``top`` most likely union entries are returned in the :class:`StepDistribution`
(the record of 290k candidates per step would dwarf the step itself); their
probabilities are the full-union ones, so greedy choice is exactly the full-union argmax.
Sampling draws among those ``top`` entries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..mathops import softmax
from ..scores import dense
from ..vocab import ByteVocab
from .base import END, Candidate, MemberScores, StepDistribution, StepMethod

if TYPE_CHECKING:
    from ..members.base import Member
    from ..sync import TokenTrack

DEFAULT_TOP = 64


@dataclass
class UnionVocab:
    """The union of several vocabularies as byte strings, and each member's map into it."""

    candidates: list[Candidate]
    """Union index -> candidate; index 0 is END."""
    maps: list[np.ndarray]
    """Per member: for each of its ids with a union entry, the union index (int64)."""
    sources: list[np.ndarray]
    """Per member: the ids that ``maps`` covers (text and EOG ids; control tokens left out)."""

    @property
    def size(self) -> int:
        return len(self.candidates)

    @classmethod
    def build(cls, vocabs: Sequence[ByteVocab]) -> UnionVocab:
        index: dict[bytes, int] = {}
        candidates: list[Candidate] = [END]
        maps, sources = [], []
        for vocab in vocabs:
            ids, targets = [], []
            for tid, piece in enumerate(vocab.pieces):
                if tid in vocab.eog_ids:
                    j = 0
                elif not piece:
                    continue  # control token: not text
                else:
                    j = index.get(piece, -1)
                    if j < 0:
                        j = index[piece] = len(candidates)
                        candidates.append(piece)
                ids.append(tid)
                targets.append(j)
            sources.append(np.asarray(ids, dtype=np.int64))
            maps.append(np.asarray(targets, dtype=np.int64))
        return cls(candidates, maps, sources)


class GaC(StepMethod):
    """The GaC step method.  ``k`` is accepted for a uniform interface and not used:
    GaC averages whole distributions.  ``top`` bounds what the step returns (see module)."""

    name = "gac"
    needs_prepare = True

    def __init__(self, k: int = 10, top: int = DEFAULT_TOP) -> None:
        self.k = k
        self.top = top
        self._vocabs: tuple[ByteVocab, ...] = ()
        self._union: UnionVocab | None = None

    def union_for(self, vocabs: Sequence[ByteVocab]) -> UnionVocab:
        """The cached union for these vocabularies (rebuilt only for a new member set)."""
        if self._union is None or len(vocabs) != len(self._vocabs) or any(a is not b for a, b in zip(vocabs, self._vocabs)):
            self._union = UnionVocab.build(vocabs)
            self._vocabs = tuple(vocabs)
        return self._union

    def prepare(self, members: Sequence[Member], tracks: Sequence[TokenTrack], primary: int | None) -> None:
        """Build (or reuse) the union maps before prefill, so set-up is timed apart."""
        self.union_for([m.vocab for m in members])

    def member_union_probs(self, member: MemberScores, union: UnionVocab, i: int, *, ignore_eos: bool) -> np.ndarray:
        """One member's full distribution scattered into the union (sums to 1)."""
        p = softmax(dense(member.logits, len(member.vocab)))
        src, dst = union.sources[i], union.maps[i]
        q = np.bincount(dst, weights=p[src], minlength=union.size)
        if ignore_eos:
            q[0] = 0.0
        total = q.sum()
        return q / total if total > 0 else q

    def __call__(self, members: Sequence[MemberScores], weights: np.ndarray, *, ignore_eos: bool = False) -> StepDistribution:
        union = self.union_for([m.vocab for m in members])
        q = np.stack([self.member_union_probs(m, union, i, ignore_eos=ignore_eos) for i, m in enumerate(members)])
        probs = np.asarray(weights, dtype=np.float64) @ q
        n = min(self.top, union.size)
        part = np.argpartition(-probs, n - 1)[:n] if n < union.size else np.arange(union.size)
        keep = part[np.lexsort((part, -probs[part]))]  # most likely first; ties: union order
        keep = keep[probs[keep] > 0] if probs[keep[0]] > 0 else keep[:1]
        return StepDistribution(
            candidates=[union.candidates[j] for j in keep.tolist()],
            probs=probs[keep],
            member_probs=q[:, keep],
            rules=[["union"] * len(keep) for _ in members],
            aligned=union.size,
        )
