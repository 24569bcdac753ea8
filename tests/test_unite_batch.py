"""The batched UniTE step equals the single-row step, row for row, on the real
vocabularies (SmolLM2 byte-level BPE, Gemma-3 SentencePiece) with logits in numpy and
in torch (top-k and the gather of union candidates then run in torch)."""

from __future__ import annotations

import numpy as np
import pytest

from unite_llm.methods.base import END, MemberScores
from unite_llm.methods.unite import BatchedUniTE, UniTE


def peaked_logits(rng: np.random.Generator, vocab_size: int, rows: int, hot: list[int]) -> np.ndarray:
    """Random logits with a few strong ids, so top-k holds real, shared candidates."""
    x = rng.normal(0, 1, size=(rows, vocab_size)).astype(np.float32)
    for b in range(rows):
        x[b, rng.choice(hot, size=min(len(hot), 8), replace=False)] += rng.uniform(4, 9, size=min(len(hot), 8))
    return x


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("ignore_eos", [False, True])
def test_batched_step_equals_single_step(smol, gemma, backend, ignore_eos):
    rng = np.random.default_rng(7)
    members = [smol, gemma]
    words = [b" the", b" cat", b" Paris", b"\n", b" 1", b"ing", b" and", b",", b" is", b" dog"]
    rows = 6
    logits = []
    for m in members:
        hot = [m.vocab.ids_of(w)[0] for w in words if m.vocab.ids_of(w)] + sorted(m.vocab.eog_ids)
        logits.append(peaked_logits(rng, len(m.vocab), rows, hot))
    weights = np.array([0.4, 0.6])
    subtokens = [lambda c, m=m: m.vocab.first_subtoken(c, m.tokenize) for m in members]
    if backend == "torch":
        import torch

        scores = [torch.from_numpy(x) for x in logits]
    else:
        scores = logits
    dists, gathered = BatchedUniTE(k=10)(
        scores, [m.vocab for m in members], [m.name for m in members], subtokens, weights, ignore_eos=ignore_eos
    )
    single = UniTE(k=10)
    saw_subtoken = False
    for b in range(rows):
        views = [MemberScores(m.name, logits[i][b], m.vocab, subtokens[i]) for i, m in enumerate(members)]
        want = single(views, weights, ignore_eos=ignore_eos)
        got = dists[b]
        assert set(got.candidates) == set(want.candidates)
        order = [want.candidates.index(c) for c in got.candidates]
        np.testing.assert_allclose(got.probs, want.probs[order], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(got.member_probs, want.member_probs[:, order], rtol=1e-9, atol=1e-12)
        assert [[r[j] for j in order] for r in want.rules] == got.rules
        assert got.candidates[int(np.argmax(got.probs))] == want.candidates[int(np.argmax(want.probs))]
        saw_subtoken |= any("subtoken" in r for r in got.rules)
        if ignore_eos:
            assert END not in got.candidates
        # Only the union's scores left the device, not the vocabulary.
        for i in range(len(members)):
            assert 0 < len(gathered[b][i].values) <= 4 * len(got.candidates)
    assert saw_subtoken  # the gather plan covered the first-sub-token rule too
