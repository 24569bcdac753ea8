"""Batched decoding: many prompts, one forward pass per member per step.

Each row is an independent generation (its own byte output, its own
:class:`~unite_llm.sync.TokenTrack` per member, its own seeded generator), decoded
exactly as :meth:`Ensemble.generate` decodes one prompt; only the members' forward
passes are shared.  Rows that finish (END, a stop string, max_new_tokens, a full
context) drop out, and the members drop their cache rows with them.

The step: UniTE runs vectorised (:class:`~unite_llm.methods.unite_batch.BatchedUniTE`,
top-k on the members' device); any other step method gets host copies of each row's
logits and runs as in the single-prompt loop.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .methods.base import END, MemberScores, StepDistribution
from .methods.unite import UniTE
from .methods.unite_batch import BatchedUniTE
from .prompts import Prompt, start_track
from .sampling import GenerationConfig, choose
from .stopping import StopStrings
from .sync import TokenTrack

if TYPE_CHECKING:
    from .engine import Ensemble, GenerationOutput

# Row names are unique per call, so a member starts a fresh batch cache for each call
# instead of carrying the previous batch's (dead) columns along.
_calls = itertools.count(1)


class _Row:
    """One prompt's generation state."""

    def __init__(self, tracks: list[TokenTrack], config: GenerationConfig) -> None:
        self.tracks = tracks
        self.rng = np.random.default_rng(config.seed)
        self.output = b""
        self.steps: list[Any] = []
        self.finish = "length"
        self.stop_reason: str | None = None


def _host_rows(scores: Any) -> np.ndarray:
    if type(scores).__module__.startswith("torch"):
        return scores.float().cpu().numpy()
    return np.asarray(scores, dtype=np.float32)


def _step(ens: Ensemble, scores: list[Any], ignore_eos: bool) -> tuple[list[StepDistribution], list[list[Any]]]:
    """Per row: the step distribution and each member's logits (full or gathered)."""
    members = ens.members
    if isinstance(ens.method, UniTE):
        batched = getattr(ens, "_batched_unite", None)
        if batched is None or batched.k != ens.method.k:
            batched = ens._batched_unite = BatchedUniTE(ens.method.k)  # type: ignore[attr-defined]
        subtokens = [lambda c, i=i: ens._first_subtoken(i, c) for i in range(len(members))]
        return batched(scores, [m.vocab for m in members], ens.names, subtokens, ens.weights, ignore_eos=ignore_eos)
    host = [_host_rows(s) for s in scores]
    dists, logits = [], []
    for b in range(host[0].shape[0]):
        row = [h[b] for h in host]
        views: list[MemberScores] = [ens._scores(i, lg) for i, lg in enumerate(row)]
        dists.append(ens.method(views, ens.weights, ignore_eos=ignore_eos))
        logits.append(row)
    return dists, logits


def decode_batch(ens: Ensemble, prompts: Sequence[Prompt], config: GenerationConfig, *, chat: bool) -> list[GenerationOutput]:
    """Generate every prompt to completion; outputs in prompt order."""
    from .engine import GenerationOutput, Timing

    rows = [_Row([start_track(m, p, chat=chat) for m in ens.members], config) for p in prompts]
    prompt_tokens = [{m.name: len(t) for m, t in zip(ens.members, r.tracks)} for r in rows]
    stops = StopStrings(config.stop)
    n_members = len(ens.members)

    base = next(_calls) << 32

    def forward(active: list[int]) -> list[Any]:
        contexts = [[rows[r].tracks[i].tokens for r in active] for i in range(n_members)]
        return ens._forward(contexts, rows=[base + r for r in active])

    active = list(range(len(rows)))
    t0 = time.perf_counter()
    scores = forward(active) if active else []
    prefill_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for index in range(config.max_new_tokens):
        if not active:
            break
        dists, logits = _step(ens, scores, config.ignore_eos)
        still: list[int] = []
        for j, r in enumerate(active):
            row, dist = rows[r], dists[j]
            choice = choose(dist.probs, config, row.rng)
            row.steps.append(ens._record(index, dist, choice))
            candidate = dist.candidates[choice]
            if candidate is END:
                row.finish = "stop"
                continue
            assert isinstance(candidate, bytes)
            before = len(row.output)
            row.output += ens._append(row.tracks, candidate, logits[j])
            hit = stops.find(row.output, before)
            if hit is not None:
                row.output = row.output[: hit[0]]
                row.finish, row.stop_reason = "stop", hit[1]
                continue
            if index + 1 == config.max_new_tokens:
                continue
            if any(len(t) >= m.n_ctx for m, t in zip(ens.members, row.tracks)):
                continue  # a member's context is full: finish as "length"
            still.append(r)
        active = still
        if active:
            scores = forward(active)
    decode_s = time.perf_counter() - t0
    return [
        GenerationOutput(
            text=row.output.decode("utf-8", errors="replace"),
            output_bytes=row.output,
            finish_reason=row.finish,
            stop_reason=row.stop_reason,
            steps=row.steps,
            timing=Timing(load_s=ens.load_s, prefill_s=prefill_s, decode_s=decode_s, steps=len(row.steps)),
            prompt_tokens=tokens,
        )
        for row, tokens in zip(rows, prompt_tokens)
    ]
