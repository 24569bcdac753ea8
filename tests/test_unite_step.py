"""The UniTE step on hand-built distributions: each rule of Algorithm 1, END, byte
fallback, duplicate ids, weights and sampling reproducibility."""

from __future__ import annotations

import math

import numpy as np
import pytest

from unite_llm.methods import END, make_method
from unite_llm.methods.base import MemberScores
from unite_llm.methods.unite import UniTE, top_k_ids
from unite_llm.sampling import GenerationConfig, choose
from unite_llm.vocab import ByteVocab


def greedy_tokenizer(vocab: ByteVocab):
    """Longest-match tokenizer over a toy vocabulary."""

    def tokenize(data: bytes) -> list[int]:
        out, pos = [], 0
        while pos < len(data):
            for end in range(len(data), pos, -1):
                ids = vocab.ids_of(data[pos:end])
                if ids:
                    out.append(ids[0])
                    pos = end
                    break
            else:
                pos += 1
        return out

    return tokenize


def member(name: str, pieces: list[bytes], probs: dict[bytes | int, float], eog: tuple[int, ...] = ()) -> MemberScores:
    """A toy member; like real byte-level vocabularies it can spell any byte."""
    pieces = pieces + [bytes([v]) for v in range(256)]
    vocab = ByteVocab(pieces, frozenset(eog))
    logits = np.full(len(pieces), -1e9, dtype=np.float32)
    for key, p in probs.items():
        tid = key if isinstance(key, int) else pieces.index(key)
        logits[tid] = math.log(p)
    tok = greedy_tokenizer(vocab)
    return MemberScores(name, logits, vocab, lambda c: vocab.first_subtoken(c, tok))


def probs_by_text(dist) -> dict:
    return {c: float(p) for c, p in zip(dist.candidates, dist.probs)}


A_PIECES = [b"", b" Paris", b" London", b" Par", b"is", b" Rome", b"x", b" ", b"B", b"e", b"r", b"l", b"i", b"n"]
B_PIECES = [b"", b" Paris", b" Lond", b"on", b" Berlin", b" Rome", b"y", b" Parisian"]


def test_three_rules_and_renormalisation():
    # A: top-2 = Paris .5, London .3 ; Rome .1 in vocab ; bare " " has (almost) no mass
    a = member("a", A_PIECES, {b" Paris": 0.5, b" London": 0.3, b" Rome": 0.1, b"x": 0.1})
    # B: top-2 = Berlin .4, Paris .3 ; " Lond" .2 is B's first sub-token of " London"
    b = member("b", B_PIECES, {b" Berlin": 0.4, b" Paris": 0.3, b" Lond": 0.2, b"y": 0.1})
    dist = UniTE(k=2)([a, b], np.array([0.5, 0.5]))
    assert dist.candidates == [b" Paris", b" London", b" Berlin"]
    assert dist.rules[0] == ["topk", "topk", "subtoken"]  # A spells " Berlin" starting with " "
    assert dist.rules[1] == ["topk", "subtoken", "topk"]  # B spells " London" as " Lond" + "on"
    assert dist.member_probs[0].tolist() == pytest.approx([0.5 / 0.8, 0.3 / 0.8, 0.0], abs=1e-6)
    assert dist.member_probs[1].tolist() == pytest.approx([0.3 / 0.9, 0.2 / 0.9, 0.4 / 0.9])
    expected = 0.5 * dist.member_probs[0] + 0.5 * dist.member_probs[1]
    assert dist.probs.tolist() == pytest.approx(expected.tolist())
    assert choose(dist.probs, GenerationConfig(), np.random.default_rng(0)) == 0  # " Paris"
    assert dist.aligned == 3


def test_in_vocab_outside_topk_uses_actual_probability():
    a = member("a", A_PIECES, {b" Paris": 0.6, b" London": 0.3, b" Rome": 0.1})
    b = member("b", B_PIECES, {b" Rome": 0.7, b" Berlin": 0.2, b" Paris": 0.1})
    dist = UniTE(k=1)([a, b], np.array([0.5, 0.5]))
    assert dist.candidates == [b" Paris", b" Rome"]
    assert dist.rules[0] == ["topk", "vocab"]
    assert dist.rules[1] == ["vocab", "topk"]
    assert dist.member_probs[0].tolist() == pytest.approx([0.6 / 0.7, 0.1 / 0.7])
    assert dist.member_probs[1].tolist() == pytest.approx([0.1 / 0.8, 0.7 / 0.8])


def test_subtoken_rule_takes_first_piece_of_member_tokenization():
    # " Parisian" is in B only; A's tokenizer spells it " Paris" + "i" + "a"... -> sub-token " Paris"
    a = member("a", A_PIECES, {b" Paris": 0.2, b" London": 0.8})
    b = member("b", B_PIECES, {b" Parisian": 0.9, b"y": 0.1})
    dist = UniTE(k=1)([a, b], np.array([0.5, 0.5]))
    j = dist.candidates.index(b" Parisian")
    assert dist.rules[0][j] == "subtoken"
    # A's first sub-token of " Parisian" is its piece " Paris" (prob .2); London .8
    assert dist.member_probs[0][j] == pytest.approx(0.2 / (0.2 + 0.8))


def test_end_is_one_shared_candidate_summing_eog_ids():
    pieces = [b"", b"", b" yes", b" no"]
    a = member("a", pieces, {0: 0.3, 1: 0.3, 2: 0.4}, eog=(0, 1))
    b = member("b", [b"", b" yes", b" no"], {0: 0.1, 1: 0.5, 2: 0.4}, eog=(0,))
    dist = UniTE(k=3)([a, b], np.array([0.5, 0.5]))
    assert dist.candidates.count(END) == 1
    j = dist.candidates.index(END)
    assert dist.member_probs[0][j] == pytest.approx(0.6)  # both EOG ids merged
    assert dist.member_probs[1][j] == pytest.approx(0.1)
    assert dist.rules[0][j] == "end"
    ignored = UniTE(k=3)([a, b], np.array([0.5, 0.5]), ignore_eos=True)
    assert END not in ignored.candidates


def test_control_tokens_never_become_candidates():
    pieces = [b"", b"<ctl>", b" a", b" b"]
    a = member("a", pieces, {0: 0.7, 2: 0.2, 3: 0.1})  # id 0: empty bytes, not EOG
    dist = UniTE(k=2)([a], np.array([1.0]))
    assert dist.candidates == [b" a", b" b"]


def test_duplicate_ids_with_same_bytes_are_merged():
    pieces = [b"", b"\n", b"\n", b"x"]  # like Gemma's "\n" and <0x0A>
    a = member("a", pieces, {1: 0.3, 2: 0.3, 3: 0.4})
    dist = UniTE(k=3)([a], np.array([1.0]))
    assert dist.candidates == [b"x", b"\n"]
    got = probs_by_text(dist)
    assert got[b"\n"] == pytest.approx(0.6)
    assert got[b"x"] == pytest.approx(0.4)
    assert choose(dist.probs, GenerationConfig(), np.random.default_rng(0)) == dist.candidates.index(b"\n")


def test_byte_fallback_candidates_meet_partial_utf8_pieces():
    ni = "你".encode()  # e4 bd a0
    # A: byte-level BPE style, the character in two partial pieces
    a_pieces = [b"", ni[:2], ni[2:], b" ok"] + [bytes([v]) for v in range(0x80, 0x100)]
    # B: SentencePiece style, the character whole plus <0xXX> byte-fallback pieces
    b_pieces = [b"", ni, b" ok"] + [bytes([v]) for v in range(0x80, 0x100)]
    a = member("a", a_pieces, {ni[:2]: 0.7, b" ok": 0.3})
    b = member("b", b_pieces, {ni: 0.8, b" ok": 0.2})
    dist = UniTE(k=2)([a, b], np.array([0.5, 0.5]))
    assert set(dist.candidates) == {ni[:2], ni, b" ok"}
    j_whole, j_part = dist.candidates.index(ni), dist.candidates.index(ni[:2])
    # A spells the whole character with its partial piece first: same probability
    assert dist.rules[0][j_whole] == "subtoken"
    assert dist.member_probs[0][j_whole] == pytest.approx(dist.member_probs[0][j_part])
    # B spells the partial piece with its byte-fallback token <0xE4> (prob ~0 here)
    assert dist.rules[1][j_part] == "subtoken"
    assert dist.member_probs[1][j_part] == pytest.approx(0.0, abs=1e-6)


def test_weights_shift_the_choice():
    a = member("a", A_PIECES, {b" Paris": 0.9, b" London": 0.1})
    b = member("b", B_PIECES, {b" Rome": 0.9, b" Paris": 0.1})
    even = UniTE(k=2)([a, b], np.array([0.5, 0.5]))
    favour_b = UniTE(k=2)([a, b], np.array([0.2, 0.8]))
    greedy, rng = GenerationConfig(), np.random.default_rng(0)
    # equal weights: Paris .5*.9/.9 + .5*.1/1.0 = .55 beats Rome .45
    assert even.candidates[choose(even.probs, greedy, rng)] == b" Paris"
    assert favour_b.candidates[choose(favour_b.probs, greedy, rng)] == b" Rome"
    assert favour_b.probs.sum() == pytest.approx(1.0)


def test_sampling_is_reproducible_with_a_seed_and_respects_top_p():
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    cfg = GenerationConfig(temperature=1.0, top_p=1.0, seed=7)
    draws = [choose(probs, cfg, np.random.default_rng(7)) for _ in range(3)]
    assert len(set(draws)) == 1
    seq1 = [choose(probs, cfg, r) for r in [np.random.default_rng(11)] for _ in range(50)]
    rng = np.random.default_rng(11)
    seq2 = [choose(probs, cfg, rng) for _ in range(50)]
    assert seq1 == seq2 and len(set(seq1)) > 1
    nucleus = GenerationConfig(temperature=1.0, top_p=0.75)
    rng = np.random.default_rng(0)
    assert {choose(probs, nucleus, rng) for _ in range(300)} == {0, 1}


def test_top_k_skips_control_tokens_even_when_they_dominate():
    n = 100
    pieces = [b""] * 40 + [bytes([65 + i % 26]) * (1 + i // 26) for i in range(60)]
    vocab = ByteVocab(pieces, frozenset())
    logits = np.zeros(n, dtype=np.float32)
    logits[:40] = 10.0  # 40 control tokens on top, more than the spare margin
    logits[40:] = np.arange(60, dtype=np.float32) / 100
    ids = top_k_ids(logits, vocab, 5)
    assert ids == [99, 98, 97, 96, 95]


@pytest.mark.parametrize("k", [0, -1, 1.5, True])
def test_bad_k_is_rejected(k):
    from unite_llm.errors import InvalidConfigError

    with pytest.raises(InvalidConfigError, match="k must be"):
        make_method("unite", k=k)
