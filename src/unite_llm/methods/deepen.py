"""DeePEn: ensembling through a shared relative space (Huang et al., NeurIPS 2024,
"Ensemble Learning for Heterogeneous Large Language Models with Deep Parallel Collaboration").

::

    A          = V_1 ∩ V_2 ∩ ...        anchor tokens (same bytes in every vocabulary)
    R_i[v, a]  = cos(e_i(v), e_i(a))    each token's similarity to the anchors, in member i's
                                         own token-embedding space
    R̂_i        = softmax_rows(R_i)       (the paper's normalisation)
    r          = sum_i w_i  p_i @ R̂_i    every member's whole distribution in relative space
    p̂          = argmin_p KL(r || p @ R̂_t), a few gradient steps from p_t   (inverse, "search")
    next       = argmax p̂ over the target (main) member's vocabulary

The cost the UniTE paper points at is memory: ``R̂_i`` is ``|V_i| x |A|``.  For the
default pair (49,152 and 262,144 tokens, tens of thousands of shared pieces) that is
tens of GiB of float32.  Before anything large is allocated the need is computed from the
shapes (it is exactly what numpy will allocate) and checked against a budget
(``memory_gib``, default 8 GiB or ``UNITE_DEEPEN_MEMORY_GIB``) together with the measured
resident memory of the process; over budget, ``deepen`` fails with that arithmetic and
names ``deepen-fit``: the largest variant that fits, which keeps the first N anchors
(ordered by the first member's ids: BPE merge rank, i.e. the most frequent pieces) and
is labelled ``deepen-topN`` in its name and in every record.

Decisions the paper leaves open:

* The inverse search runs on the target's *logits* (p = softmax(z), z initialised to the
  target's own), so every iterate is a distribution; ``steps`` and ``lr`` are the paper's
  "number of search steps" and "relative ensemble learning rate".
* Control tokens (no bytes) get probability 0 before mapping; END is the target's
  end-of-generation ids, as in UniTE.  The target member is the ensemble's ``primary`` if
  set, else the first member.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from ..candidates import candidate_of
from ..errors import InvalidConfigError
from ..mathops import softmax, softmax_rows_
from ..members.base import can
from ..scores import dense
from ..vocab import ByteVocab
from .base import END, Candidate, MemberScores, StepDistribution, StepMethod

if TYPE_CHECKING:
    from ..members.base import Member
    from ..sync import TokenTrack

log = logging.getLogger("unite_llm")

GIB = 1 << 30
DEFAULT_MEMORY_GIB = 8.0
WORK_MARGIN = 512 << 20  # headroom for per-chunk temporaries and the step's vectors
_CHUNK = 4096  # vocabulary rows per block when building R̂


class OutOfMemoryError(InvalidConfigError):
    """A configuration whose measured memory need exceeds the budget (checked before allocating)."""


def current_rss() -> int:
    """Resident memory of this process now, in bytes (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def anchor_pieces(vocabs: Sequence[ByteVocab]) -> list[bytes]:
    """Pieces present (as exact bytes) in every vocabulary, in the first vocabulary's id order."""
    first = vocabs[0]
    seen: set[bytes] = set()
    out = []
    for tid, piece in enumerate(first.pieces):
        if not first.emittable[tid] or piece in seen:
            continue
        if all(v.ids_of(piece) for v in vocabs[1:]):
            seen.add(piece)
            out.append(piece)
    return out


def relative_matrix(embeddings: np.ndarray, anchor_ids: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """``softmax_rows(cos(E, E[anchors]) / temperature)`` as float32, built block by block."""
    emb = np.asarray(embeddings, dtype=np.float32)
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    anchors = emb[anchor_ids] / np.maximum(norms[anchor_ids], 1e-12)
    out = np.empty((emb.shape[0], len(anchor_ids)), dtype=np.float32)
    for lo in range(0, emb.shape[0], _CHUNK):
        block = emb[lo : lo + _CHUNK] / np.maximum(norms[lo : lo + _CHUNK], 1e-12)
        sims = (block @ anchors.T) / temperature
        out[lo : lo + _CHUNK] = softmax_rows_(sims)
    return out


def inverse_search(r: np.ndarray, rel: np.ndarray, logits: np.ndarray, allowed: np.ndarray, steps: int, lr: float) -> np.ndarray:
    """Distribution over the target vocabulary whose relative image is close to ``r``.

    Gradient descent on ``KL(r || softmax(z) @ rel)`` over the logits ``z``, from the
    target's own logits (tokens not ``allowed`` stay at probability 0).
    """
    z = np.where(allowed, np.asarray(logits, dtype=np.float64), -np.inf)
    p = softmax(z)
    r = np.asarray(r, dtype=np.float64)
    for _ in range(steps):
        q = np.maximum(rel.T @ p.astype(np.float32), 1e-30).astype(np.float64)
        g = -(rel @ (r / q).astype(np.float32)).astype(np.float64)  # dL/dp
        z = z - lr * p * (g - p @ g)  # chain rule through the softmax
        p = softmax(z)
    return p


def kl(r: np.ndarray, q: np.ndarray) -> float:
    r = np.asarray(r, dtype=np.float64)
    q = np.maximum(np.asarray(q, dtype=np.float64), 1e-30)
    m = r > 0
    return float((r[m] * np.log(r[m] / q[m])).sum())


@dataclass
class RelativeSpace:
    anchors: list[bytes]
    matrices: list[np.ndarray]
    allowed: list[np.ndarray]
    """Per member: ids that may carry probability (text and EOG; not control tokens)."""

    @property
    def nbytes(self) -> int:
        return sum(m.nbytes for m in self.matrices)


def budget_bytes(memory_gib: float | None) -> int:
    if memory_gib is None:
        memory_gib = float(os.environ.get("UNITE_DEEPEN_MEMORY_GIB", DEFAULT_MEMORY_GIB))
    if memory_gib <= 0:
        raise InvalidConfigError(f"memory_gib must be > 0, got {memory_gib}")
    return int(memory_gib * GIB)


class DeePEn(StepMethod):
    """The DeePEn step method.

    ``anchors``: use only the first N anchors (None: all).  ``fit``: pick the largest N that
    fits ``memory_gib`` (the ``deepen-fit`` method).  ``k`` is unused (uniform interface).
    """

    name = "deepen"
    needs_prepare = True

    def __init__(
        self,
        k: int = 10,
        *,
        anchors: int | None = None,
        fit: bool = False,
        memory_gib: float | None = None,
        steps: int = 5,
        lr: float = 2.0,
        temperature: float = 1.0,
        top: int = 64,
    ) -> None:
        if anchors is not None and anchors < 1:
            raise InvalidConfigError(f"anchors must be >= 1, got {anchors}")
        self.k = k
        self.n_anchors = anchors
        self.fit = fit
        self.budget = budget_bytes(memory_gib)
        self.steps, self.lr, self.temperature, self.top = steps, lr, temperature, top
        self.target = 0
        self.space: RelativeSpace | None = None
        self.n_full_anchors = 0
        self.setup_rss_delta = 0
        self._vocabs: tuple[ByteVocab, ...] = ()
        if fit:
            self.name = "deepen-fit"

    # -- set-up ---------------------------------------------------------------------

    def prepare(self, members: Sequence[Member], tracks: Sequence[TokenTrack], primary: int | None) -> None:
        """Build the relative space once per member set (token embeddings from each member)."""
        self.target = primary if primary is not None else 0
        vocabs = [m.vocab for m in members]
        if self.space is not None and all(a is b for a, b in zip(vocabs, self._vocabs)) and len(vocabs) == len(self._vocabs):
            return
        loaders = []
        for m in members:
            if not can(m, "token_embeddings"):
                raise InvalidConfigError(f"deepen needs token embeddings, and member {m.name} cannot provide them")
            loaders.append(cast(Any, m).token_embeddings)
        self.setup(vocabs, loaders)

    def setup(self, vocabs: Sequence[ByteVocab], embeddings: Sequence[Callable[[], np.ndarray]]) -> RelativeSpace:
        """Anchors, the memory check, then each member's R̂ (``embeddings``: one loader per member)."""
        rss0 = current_rss()
        anchors = anchor_pieces(vocabs)
        if not anchors:
            raise InvalidConfigError("deepen: the members' vocabularies share no token, so there are no anchors")
        self.n_full_anchors = len(anchors)
        rows = sum(len(v) for v in vocabs)
        per_anchor = rows * np.dtype(np.float32).itemsize
        want = min(self.n_anchors or len(anchors), len(anchors))
        if not self.fit and rss0 + want * per_anchor + WORK_MARGIN > self.budget:
            fits = max(0, (self.budget - rss0 - WORK_MARGIN) // per_anchor)
            sizes = " + ".join(f"{len(v):,}" for v in vocabs)
            raise OutOfMemoryError(
                f"deepen: out of memory: its relative-representation matrices need ({sizes}) tokens x {want:,} anchors"
                f" x 4 B = {want * per_anchor / GIB:.1f} GiB, plus {rss0 / GIB:.2f} GiB already resident, over the"
                f" {self.budget / GIB:.1f} GiB budget (UNITE_DEEPEN_MEMORY_GIB). Nothing was allocated."
                f" The largest variant that fits keeps about {fits:,} of the {len(anchors):,} anchors: --method deepen-fit"
            )
        loaded = [np.asarray(load(), dtype=np.float32) for load in embeddings]
        for v, e in zip(vocabs, loaded):
            if e.shape[0] != len(v):
                raise InvalidConfigError(f"deepen: an embedding matrix has {e.shape[0]} rows for a {len(v)}-token vocabulary")
        if self.fit:
            rss1 = current_rss()
            want = min(len(anchors), int((self.budget - rss1 - WORK_MARGIN) // per_anchor))
            if want < 1:
                raise OutOfMemoryError(
                    f"deepen-fit: out of memory: {rss1 / GIB:.2f} GiB resident after loading embeddings leaves no room"
                    f" for even one anchor column ({per_anchor / GIB:.3f} GiB) within {self.budget / GIB:.1f} GiB"
                )
        chosen = anchors[:want]
        matrices = []
        for v, e in zip(vocabs, loaded):
            ids = np.asarray([v.ids_of(a)[0] for a in chosen], dtype=np.int64)
            matrices.append(relative_matrix(e, ids, self.temperature))
        del loaded
        allowed = [np.asarray([bool(p) or i in v.eog_ids for i, p in enumerate(v.pieces)]) for v in vocabs]
        self.space = RelativeSpace(chosen, matrices, allowed)
        self._vocabs = tuple(vocabs)
        self.setup_rss_delta = current_rss() - rss0
        if want < len(anchors):
            self.name = f"deepen-top{want}"
        log.info("deepen: %d of %d anchors, R matrices %.2f GiB", want, len(anchors), self.space.nbytes / GIB)
        return self.space

    # -- the step -------------------------------------------------------------------

    def member_probs(self, member: MemberScores, allowed: np.ndarray, *, ignore_eos: bool) -> np.ndarray:
        n = len(member.vocab)
        mask = allowed.copy()
        if ignore_eos:
            mask[list(member.vocab.eog_ids)] = False
        return softmax(np.where(mask, dense(member.logits, n), -np.inf))

    def __call__(self, members: Sequence[MemberScores], weights: np.ndarray, *, ignore_eos: bool = False) -> StepDistribution:
        space = self.space
        if space is None or len(space.matrices) != len(members):
            raise InvalidConfigError("deepen has no relative space for these members: run it through Ensemble (prepare)")
        t = self.target
        probs = [self.member_probs(m, space.allowed[i], ignore_eos=ignore_eos) for i, m in enumerate(members)]
        w = np.asarray(weights, dtype=np.float64)
        r = sum(w[i] * (space.matrices[i].T @ p.astype(np.float32)).astype(np.float64) for i, p in enumerate(probs))
        allowed_t = space.allowed[t].copy()
        if ignore_eos:
            allowed_t[list(members[t].vocab.eog_ids)] = False
        p_hat = inverse_search(
            r, space.matrices[t], dense(members[t].logits, len(members[t].vocab)), allowed_t, self.steps, self.lr
        )
        return self._distribution(members, probs, p_hat, t, sum(len(m.vocab) for m in members))

    def _distribution(
        self, members: Sequence[MemberScores], probs: list[np.ndarray], p_hat: np.ndarray, t: int, aligned: int
    ) -> StepDistribution:
        vocab = members[t].vocab
        n = min(len(p_hat), 2 * self.top)
        ids = np.argpartition(-p_hat, n - 1)[:n] if n < len(p_hat) else np.arange(len(p_hat))
        merged: dict[Candidate, float] = {}
        for tid in ids.tolist():
            if p_hat[tid] <= 0:
                continue
            cand = candidate_of(tid, vocab)
            merged[cand] = merged.get(cand, 0.0) + float(p_hat[tid])
        cands = sorted(merged, key=lambda c: -merged[c])[: self.top]
        member_rows, rules = [], []
        for m, p in zip(members, probs):
            row, rule = [], []
            for c in cands:
                ids_c = m.vocab.ids_of(c) if isinstance(c, bytes) else sorted(m.vocab.eog_ids)
                row.append(float(p[list(ids_c)].sum()) if ids_c else 0.0)
                rule.append(("end" if c is END else "vocab") if ids_c else "none")
            member_rows.append(row)
            rules.append(rule)
        return StepDistribution(
            candidates=cands,
            probs=np.asarray([merged[c] for c in cands]),
            member_probs=np.asarray(member_rows),
            rules=rules,
            aligned=aligned,
        )


class DeePEnFit(DeePEn):
    """``deepen-fit``: DeePEn with the most anchors that fit the memory budget."""

    def __init__(self, k: int = 10, **options: Any) -> None:
        super().__init__(k=k, fit=True, **options)
