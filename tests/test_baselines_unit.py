"""The baseline step methods on hand-built vocabularies and distributions (checked by hand)."""

from __future__ import annotations

import numpy as np
import pytest

from unite_llm.errors import InvalidConfigError
from unite_llm.methods import METHODS, make_method
from unite_llm.methods.base import END, MemberScores
from unite_llm.methods.deepen import DeePEn, OutOfMemoryError, anchor_pieces, inverse_search, kl, relative_matrix
from unite_llm.methods.gac import GaC, UnionVocab
from unite_llm.methods.packllm import packllm_weights, prompt_log_ppl
from unite_llm.rank import pick_best
from unite_llm.vocab import ByteVocab

# Member A: ids 0 "a", 1 "b", 2 "ab", 3 <control>, 4 <eos>
VA = ByteVocab([b"a", b"b", b"ab", b"", b""], frozenset({4}))
# Member B: ids 0 "b", 1 "c", 2 "c" (a duplicate), 3 "ab", 4 <eos>, 5 <eot>
VB = ByteVocab([b"b", b"c", b"c", b"ab", b"", b""], frozenset({4, 5}))


def scores(vocab: ByteVocab, probs: list[float], name: str) -> MemberScores:
    """Logits whose softmax is ``probs`` (0 -> -inf)."""
    logits = np.log(np.maximum(np.asarray(probs, dtype=np.float64), 1e-300)).astype(np.float32)
    return MemberScores(name, logits, vocab, lambda c: None)


def test_registry_has_every_baseline() -> None:
    assert {"unite", "gac", "deepen", "deepen-fit", "packllm", "rank"} <= set(METHODS)
    with pytest.raises(InvalidConfigError, match="unknown method"):
        make_method("gack")


# -- GaC ------------------------------------------------------------------------------


def test_gac_union_by_hand() -> None:
    u = UnionVocab.build([VA, VB])
    # END first, then A's pieces in id order, then B's new ones; control tokens left out.
    assert u.candidates == [END, b"a", b"b", b"ab", b"c"]
    assert u.sources[0].tolist() == [0, 1, 2, 4]  # A's control id 3 has no entry
    assert u.maps[0].tolist() == [1, 2, 3, 0]  # eos -> END
    assert u.sources[1].tolist() == [0, 1, 2, 3, 4, 5]
    assert u.maps[1].tolist() == [2, 4, 4, 3, 0, 0]  # both "c" ids -> one entry, both EOG ids -> END


def test_gac_step_by_hand() -> None:
    # A: a .5, b .2, ab .1, control .1 (dropped, so A renormalises over .9), eos .1
    a = scores(VA, [0.5, 0.2, 0.1, 0.1, 0.1], "A")
    # B: b .1, c .3 + .3 (duplicates sum to .6), ab .2, eos .05, eot .05
    b = scores(VB, [0.1, 0.3, 0.3, 0.2, 0.05, 0.05], "B")
    gac = GaC(top=10)
    dist = gac([a, b], np.array([0.5, 0.5]))
    qa = {END: 0.1 / 0.9, b"a": 0.5 / 0.9, b"b": 0.2 / 0.9, b"ab": 0.1 / 0.9, b"c": 0.0}
    qb = {END: 0.1, b"a": 0.0, b"b": 0.1, b"ab": 0.2, b"c": 0.6}
    expect = {c: 0.5 * qa[c] + 0.5 * qb[c] for c in qa}
    got = dict(zip(dist.candidates, dist.probs.tolist()))
    for cand, p in expect.items():
        assert got.get(cand, 0.0) == pytest.approx(p, abs=1e-6)
    # "c" wins only because B's two "c" ids are summed (0.3 + 0.3): 0.30 against "a"'s 0.278
    assert dist.candidates[0] == b"c" and max(expect, key=expect.get) == b"c"
    assert dist.aligned == 5
    assert dist.member_probs.shape == (2, len(dist.candidates))


def test_gac_top_trims_the_record_not_the_argmax() -> None:
    a = scores(VA, [0.5, 0.2, 0.1, 0.1, 0.1], "A")
    b = scores(VB, [0.1, 0.3, 0.3, 0.2, 0.05, 0.05], "B")
    full = GaC(top=10)([a, b], np.array([0.5, 0.5]))
    one = GaC(top=1)([a, b], np.array([0.5, 0.5]))
    assert one.candidates == [full.candidates[int(np.argmax(full.probs))]]
    assert one.aligned == 5  # the whole union was still scored


def test_gac_ignore_eos_and_cache() -> None:
    a = scores(VA, [0.1, 0.1, 0.1, 0.1, 0.6], "A")
    b = scores(VB, [0.1, 0.1, 0.1, 0.1, 0.3, 0.3], "B")
    gac = GaC()
    assert gac([a, b], np.array([0.5, 0.5])).candidates[0] is END
    dist = gac([a, b], np.array([0.5, 0.5]), ignore_eos=True)
    assert END not in dist.candidates
    assert dist.probs.sum() == pytest.approx(1.0)
    first = gac.union_for([VA, VB])
    assert gac.union_for([VA, VB]) is first  # built once per member set


# -- DeePEn ---------------------------------------------------------------------------

# A: x y z <eos>; B: y x w <eos>.  Anchors: x, y (A's order).
DA = ByteVocab([b"x", b"y", b"z", b""], frozenset({3}))
DB = ByteVocab([b"y", b"x", b"w", b""], frozenset({3}))
EA = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [-1.0, 0.0]], dtype=np.float32)
EB = np.array([[0.0, 2.0], [3.0, 0.0], [0.8, 0.6], [0.0, -1.0]], dtype=np.float32)


def test_deepen_anchors_and_relative_matrix_by_hand() -> None:
    assert anchor_pieces([DA, DB]) == [b"x", b"y"]
    r = relative_matrix(EA, np.array([0, 1]))
    # z = (0.6, 0.8): cos to x 0.6, to y 0.8 -> softmax
    e = np.exp([0.6, 0.8])
    assert r[2] == pytest.approx(e / e.sum(), abs=1e-6)
    assert r[0] == pytest.approx(np.exp([1.0, 0.0]) / np.exp([1.0, 0.0]).sum(), abs=1e-6)
    assert r.sum(axis=1) == pytest.approx(np.ones(4), abs=1e-6)
    # B's rows for the same pieces (different ids, different scale) give the same relative rows
    rb = relative_matrix(EB, np.array([1, 0]))
    assert rb[1] == pytest.approx(r[0], abs=1e-6) and rb[0] == pytest.approx(r[1], abs=1e-6)


def test_deepen_inverse_search_moves_toward_the_target() -> None:
    rel = relative_matrix(EA, np.array([0, 1]), temperature=0.1)
    allowed = np.array([True, True, True, True])
    p0 = np.array([0.7, 0.1, 0.1, 0.1])
    target = np.array([0.1, 0.7, 0.1, 0.1]) @ rel  # an aggregate that prefers y
    p = inverse_search(target, rel, np.log(p0), allowed, steps=20, lr=5.0)
    assert p.sum() == pytest.approx(1.0)
    assert p[1] > p0[1]
    assert kl(target, p @ rel) < kl(target, p0 @ rel)
    # At the optimum (the aggregate is the start's own image) the search stays put.
    same = inverse_search(p0 @ rel, rel, np.log(p0), allowed, steps=20, lr=5.0)
    assert same == pytest.approx(p0, abs=1e-6)


def test_deepen_step_on_toy_members() -> None:
    d = DeePEn(memory_gib=64, temperature=0.1, lr=5.0, steps=10)
    d.setup([DA, DB], [lambda: EA, lambda: EB])
    assert d.space is not None and d.space.anchors == [b"x", b"y"] and d.name == "deepen"
    a = scores(DA, [0.6, 0.3, 0.05, 0.05], "A")
    b = scores(DB, [0.9, 0.05, 0.04, 0.01], "B")  # B is sure of "y"
    dist = d([a, b], np.array([0.5, 0.5]))
    got = dict(zip(dist.candidates, dist.probs.tolist()))
    assert set(got) <= {b"x", b"y", b"z", END}  # candidates are the target's (A's) tokens
    assert got[b"y"] > 0.3  # pulled toward B's choice
    assert dist.aligned == 8
    assert dist.probs.sum() == pytest.approx(1.0)


def test_deepen_out_of_memory_is_checked_before_loading() -> None:
    loaded = []

    def loader() -> np.ndarray:
        loaded.append(1)
        return EA

    d = DeePEn(memory_gib=0.01)
    with pytest.raises(OutOfMemoryError, match=r"out of memory.*over the 0.0 GiB budget.*deepen-fit"):
        d.setup([DA, DB], [loader, loader])
    assert not loaded and d.space is None


def test_deepen_needs_setup() -> None:
    with pytest.raises(InvalidConfigError, match="no relative space"):
        DeePEn()([scores(DA, [0.25] * 4, "A")], np.array([1.0]))


# -- PackLLM --------------------------------------------------------------------------


def test_packllm_weights_from_perplexities() -> None:
    w = packllm_weights([1.0, 2.0], tau=1.0)
    e = np.exp([-1.0, -2.0])
    assert w == pytest.approx(e / e.sum())
    assert packllm_weights([1.0, 2.0], tau=0.01)[0] == pytest.approx(1.0)  # low tau: the best member alone
    assert packllm_weights([1.0, 2.0], tau=1e6) == pytest.approx([0.5, 0.5])  # high tau: uniform
    with pytest.raises(InvalidConfigError, match="tau"):
        packllm_weights([1.0], tau=0)


def test_prompt_log_ppl() -> None:
    lp = np.log([0.5, 0.25])
    assert prompt_log_ppl(lp, 10, "token") == pytest.approx(-(np.log(0.5) + np.log(0.25)) / 2)
    assert prompt_log_ppl(lp, 10, "byte") == pytest.approx(-(np.log(0.5) + np.log(0.25)) / 10)


# -- rank -----------------------------------------------------------------------------


def test_rank_picks_the_highest_mean_loglik() -> None:
    # scores[i][j]: scorer i on answer j
    s = np.array([[-1.0, -0.5, -2.0], [-1.2, -0.9, -0.1]])
    best, totals = pick_best(s)
    assert totals == pytest.approx([-1.1, -0.7, -1.05])
    assert best == 1
    # an empty answer (NaN everywhere) ranks last; a tie goes to the earlier member
    best, totals = pick_best(np.array([[np.nan, -3.0, -3.0], [np.nan, -1.0, -1.0]]))
    assert best == 1 and totals[0] == -np.inf
