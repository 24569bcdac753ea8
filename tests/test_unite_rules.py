"""The single and batched UniTE steps share one rule tree (``candidate_ids``) and one
combination (``combine``): on random logits over two toy vocabularies that disagree on
merges (so every rule fires) the batched step equals the single step row for row, to the
bit, with one or per-row weights and with or without ``ignore_eos``."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from unite_llm.methods.base import END, MemberScores
from unite_llm.methods.unite import BatchedUniTE, UniTE, candidate_ids, member_ids

from .fakes import FakeMember

MEMBERS = [FakeMember("left"), FakeMember("right")]
SUBTOKENS = [lambda c, m=m: m.vocab.first_subtoken(c, m.tokenize) for m in MEMBERS]


def logits_for(seed: int, rows: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for m in MEMBERS:
        x = rng.normal(0, 2, size=(rows, len(m.vocab))).astype(np.float32)
        x[:, 0] = -1e9
        multi = [i for i, p in enumerate(m.vocab.pieces) if len(p) > 1]  # pieces the other may lack
        x[:, multi] += rng.uniform(2, 6, size=(rows, len(multi))).astype(np.float32)
        out.append(x)
    return out


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    rows=st.integers(1, 4),
    k=st.integers(1, 12),
    ignore_eos=st.booleans(),
    per_row=st.booleans(),
)
def test_batched_equals_single_exactly(seed: int, rows: int, k: int, ignore_eos: bool, per_row: bool) -> None:
    logits = logits_for(seed, rows)
    rng = np.random.default_rng(seed + 1)
    weights = rng.dirichlet([1.0, 1.0], size=rows) if per_row else np.array([0.3, 0.7])
    dists, gathered = BatchedUniTE(k)(
        logits, [m.vocab for m in MEMBERS], [m.name for m in MEMBERS], SUBTOKENS, weights, ignore_eos=ignore_eos
    )
    for b in range(rows):
        views = [MemberScores(m.name, logits[i][b], m.vocab, SUBTOKENS[i]) for i, m in enumerate(MEMBERS)]
        want = UniTE(k)(views, weights[b] if per_row else weights, ignore_eos=ignore_eos)
        got = dists[b]
        assert got.candidates == want.candidates
        assert got.probs.tobytes() == want.probs.tobytes()
        assert got.member_probs.tobytes() == want.member_probs.tobytes()
        assert got.rules == want.rules
        # The gather plan is the rule tree's ids, and no more.
        for i, m in enumerate(MEMBERS):
            ids = {t for c in got.candidates for t in candidate_ids(m.vocab, SUBTOKENS[i], c, False, ignore_eos)[0]}
            assert set(gathered[b][i].values) == ids


@settings(max_examples=60, deadline=None)
@given(member=st.integers(0, 1), piece=st.binary(min_size=1, max_size=4) | st.just(END), in_top=st.booleans(), eos=st.booleans())
def test_rule_tree_is_member_ids(member: int, piece: object, in_top: bool, eos: bool) -> None:
    m = MEMBERS[member]
    view = MemberScores(m.name, np.zeros(len(m.vocab), np.float32), m.vocab, SUBTOKENS[member])
    ids, rule = candidate_ids(m.vocab, SUBTOKENS[member], piece, in_top, eos)  # type: ignore[arg-type]
    assert member_ids(view, piece, in_top, eos) == (ids, rule)  # type: ignore[arg-type]
    assert rule in {"none", "end", "topk", "vocab", "subtoken"}
    assert (rule == "none") == (not ids)
