"""Response-level ensembling: every member answers alone, the best answer wins
(the selection step of LLM-Blender, Jiang et al. 2023).

Not a step method: no token is ever shared between members while they generate, so it
lives beside the decode loop, not among the per-step rules of :mod:`unite_llm.methods`;
it is a :class:`~unite_llm.methods.base.ResponseMethod`, handed whole prompts.  ::

    answer_i = member_i generating on its own                  (a one-member Ensemble)
    s_ij     = mean_t log p_i(answer_j,t | prompt, answer_j,<t)   (every member scores every answer)
    best     = argmax_j mean_i s_ij

LLM-Blender ranks with PairRM, a trained pairwise reward model that cannot be fetched
here; the default ranker is the members themselves (mean per-token log-likelihood,
cross-scored, so a member does not simply prefer its own answer).  Give a local PairRM
checkout with ``Rank(ranker=PATH)`` or the ``UNITE_PAIRRM`` environment variable to rank
with it instead (needs ``pip install llm-blender``).

``Ensemble.generate/stream`` hand over to :meth:`Rank.generate` when the method is
``rank`` (``unite generate --method rank``); :func:`rank_generate` is the plain entry point.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .engine import Ensemble, GenerationOutput, Timing
from .errors import InvalidConfigError
from .members.base import Member, common_prefix, token_logprobs
from .methods.base import ResponseMethod
from .prompts import Prompt, start_track
from .sampling import GenerationConfig

log = logging.getLogger("unite_llm")


@dataclass
class Ranking:
    """How the answers were ranked (kept on the method as ``last_ranking``)."""

    answers: dict[str, str]
    """Each member's own answer."""
    scores: list[list[float]]
    """``scores[i][j]``: member i's mean log-likelihood per token of member j's answer."""
    totals: list[float]
    """Each answer's ranking score (mean over scorers; PairRM: minus its rank)."""
    best: int
    ranker: str


def pick_best(scores: np.ndarray) -> tuple[int, np.ndarray]:
    """Best answer from a ``[scorers, answers]`` score matrix: highest mean over scorers.

    An answer no scorer could score (empty: NaN) ranks last; ties go to the earlier
    member, so the choice is deterministic.
    """
    scores = np.asarray(scores, dtype=np.float64)
    valid = ~np.isnan(scores)
    counts = valid.sum(axis=0)
    sums = np.where(valid, scores, 0.0).sum(axis=0)
    totals = np.where(counts > 0, sums / np.maximum(counts, 1), -np.inf)
    return int(np.argmax(totals)), totals


def answer_loglik(member: Member, prompt: Prompt, answer: bytes, *, chat: bool) -> float:
    """``member``'s mean log-probability per token of ``answer`` after ``prompt`` (NaN if empty)."""
    track = start_track(member, prompt, chat=chat)
    base = list(track.tokens)
    tokens = track.append(answer)
    start = max(1, common_prefix(base, tokens))  # the prompt's open tail may re-merge with the answer
    if start >= len(tokens):
        return float("nan")
    return float(np.mean(token_logprobs(member, tokens, start)))


def pairrm_scores(path: str, prompt: Prompt, answers: Sequence[str]) -> np.ndarray:
    """Rank with a local PairRM model through llm-blender; returns ``-rank`` per answer."""
    try:
        import llm_blender
    except Exception as err:  # any import failure (missing, or broken deps) means no PairRM
        raise InvalidConfigError(f"the PairRM ranker needs the llm-blender package ({err}); pip install llm-blender") from None
    if not os.path.isdir(path):
        raise InvalidConfigError(f"PairRM model directory not found: {path}")
    text = prompt if isinstance(prompt, str) else prompt.decode() if isinstance(prompt, bytes) else prompt[-1]["content"]
    blender = llm_blender.Blender()
    blender.loadranker(path)
    ranks = blender.rank([text], [list(answers)], return_scores=False, batch_size=1)
    return -np.asarray(ranks[0], dtype=np.float64)


def rank_generate(
    ensemble: Ensemble, prompt: Prompt, config: GenerationConfig | None = None, *, chat: bool = False, ranker: str | None = None
) -> tuple[GenerationOutput, Ranking]:
    """Every member answers alone; the best-ranked answer is returned with how it was ranked.

    Called by :meth:`Rank.generate` inside the ensemble's turn; called directly, it takes
    that turn itself, so no other generation steps the members meanwhile.
    """
    if not ensemble.in_turn():
        with ensemble.exclusive():
            return rank_generate(ensemble, prompt, config, chat=chat, ranker=ranker)
    config = config or GenerationConfig()
    outputs = []
    timing = Timing(load_s=ensemble.load_s)
    for member in ensemble.members:
        solo = Ensemble([member], k=ensemble.method.k, method="unite")  # a lone member is its own primary
        out = solo.generate(prompt, config, chat=chat)
        outputs.append(out)
        timing.prefill_s += out.timing.prefill_s
        timing.decode_s += out.timing.decode_s
    t0 = time.perf_counter()
    if ranker:
        totals = pairrm_scores(ranker, prompt, [o.text for o in outputs])
        scores = np.tile(totals, (1, 1))
        best, name = int(np.argmax(totals)), f"pairrm:{ranker}"
    else:
        scores = np.array(
            [[answer_loglik(m, prompt, o.output_bytes, chat=chat) for o in outputs] for m in ensemble.members], dtype=np.float64
        )
        best, totals = pick_best(scores)
        name = "loglik"
    timing.prepare_s = time.perf_counter() - t0  # ranking cost
    timing.decode_s += timing.prepare_s
    chosen = outputs[best]
    timing.steps = chosen.timing.steps
    ranking = Ranking(
        answers={m.name: o.text for m, o in zip(ensemble.members, outputs)},
        scores=scores.tolist(),
        totals=[float(t) for t in totals],
        best=best,
        ranker=name,
    )
    log.info("rank: totals %s -> %s", ranking.totals, ensemble.members[best].name)
    result = GenerationOutput(
        text=chosen.text,
        output_bytes=chosen.output_bytes,
        finish_reason=chosen.finish_reason,
        stop_reason=chosen.stop_reason,
        steps=chosen.steps,
        timing=timing,
        prompt_tokens={m.name: o.prompt_tokens[m.name] for m, o in zip(ensemble.members, outputs)},
    )
    return result, ranking


class Rank(ResponseMethod):
    """The ``rank`` method: response-level selection (see the module docstring)."""

    name = "rank"

    def __init__(self, k: int = 10, ranker: str | None = None) -> None:
        self.k = k
        self.ranker = ranker or os.environ.get("UNITE_PAIRRM") or None
        self.last_ranking: Ranking | None = None

    def generate(self, ensemble: Ensemble, prompt: Prompt, config: GenerationConfig, *, chat: bool = False) -> GenerationOutput:
        out, self.last_ranking = rank_generate(ensemble, prompt, config, chat=chat, ranker=self.ranker)
        return out
