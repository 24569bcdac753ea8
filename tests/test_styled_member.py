"""The restyled member used for the Fig. 2 experiment, on the real SmolLM2 model."""

from __future__ import annotations

import numpy as np
import pytest

from unite_llm.errors import InvalidConfigError
from unite_llm.members import load_member
from unite_llm.members.styled import SUPPRESSED_LOGIT, parse_style

from .tiers import model_fixture


@model_fixture(scope="module")
def styled():
    m = load_member("styled:verbose,temperature=2:smollm2-135m-instruct", n_ctx=512, n_threads=1)
    yield m
    m.close()


def test_verbose_and_temperature(styled, smol) -> None:
    assert styled.name == "smollm2-135m-instruct@verbose,temperature=2"
    ctx = smol.tokenize(b"Question: Who wrote Hamlet?\nAnswer: Shakespeare.", add_bos=True)
    plain = np.array(smol.next_logits(ctx), dtype=np.float32)
    mine = np.array(styled.next_logits(ctx))
    newline = smol.vocab.ids_of(b"\n")[0]
    assert mine[newline] == pytest.approx(SUPPRESSED_LOGIT / 2)
    eog = next(iter(smol.vocab.eog_ids))
    assert mine[eog] == pytest.approx(SUPPRESSED_LOGIT / 2)
    word = smol.vocab.ids_of(b" The")[0]
    assert mine[word] == pytest.approx(plain[word] / 2, rel=1e-4, abs=1e-3)  # the rest: only tempered


def test_prefix_is_read_after_bos(smol) -> None:
    m = load_member("styled:prefix=Hello there.\\n:smollm2-135m-instruct", n_ctx=512, n_threads=1)
    try:
        ctx = smol.tokenize(b"The capital of France is", add_bos=False)
        direct = smol.tokenize(b"Hello there.\n", add_bos=False) + ctx
        want = np.array(smol.next_logits(direct), dtype=np.float32)
        got = np.array(m.next_logits(ctx), dtype=np.float32)
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)
    finally:
        m.close()


def test_bad_styles() -> None:
    with pytest.raises(InvalidConfigError, match="unknown option 'loud'"):
        parse_style("loud")
    with pytest.raises(InvalidConfigError, match="temperature must be > 0"):
        parse_style("temperature=0")
    with pytest.raises(InvalidConfigError, match="styled:<options>:<model>"):
        load_member("styled:verbose")


# -- abilities: a styled member keeps every ability of the member it wraps (issue 27 item 3) ----------


@model_fixture(scope="module")
def batched_prefix():
    m = load_member("styled:prefix=Hello there.\\n:smollm2-135m-instruct", n_ctx=512, n_threads=1, n_seq=2)
    yield m
    m.close()


def test_a_styled_member_declares_its_inner_members_abilities(batched_prefix, styled) -> None:
    from unite_llm.members import HOOKS, abilities, supports_batch

    assert abilities(batched_prefix) == frozenset(HOOKS)  # llama.cpp's every hook, score included
    assert batched_prefix.max_rows == 2 and batched_prefix.cheap_joins and supports_batch(batched_prefix)
    assert abilities(styled) == frozenset(HOOKS) - {"score"}  # restyled logits: no one-pass score of the inner's
    assert styled.max_rows == 1 and not supports_batch(styled)  # loaded without n_seq: row by row, as its inner


def test_a_styled_member_batches_with_its_style(smol) -> None:
    m = load_member("styled:verbose,temperature=2:smollm2-135m-instruct", n_ctx=512, n_threads=1, n_seq=2)
    plain = load_member("smollm2-135m-instruct", n_ctx=512, n_threads=1, n_seq=2)
    try:
        a = smol.tokenize(b"The capital of France is", add_bos=True)
        b = smol.tokenize(b"Question: Who wrote Hamlet?\nAnswer:", add_bos=True)
        batch = np.array(m.next_logits_batch([a, b], [0, 1]))
        assert batch.shape == (2, len(smol.vocab))
        newline = smol.vocab.ids_of(b"\n")[0]
        assert np.all(batch[:, newline] == pytest.approx(SUPPRESSED_LOGIT / 2))
        want = np.array(plain.next_logits_batch([a, b], [0, 1]), dtype=np.float32)  # the same batched pass, unstyled
        want[:, m._suppress] = SUPPRESSED_LOGIT
        np.testing.assert_allclose(batch, want / 2, rtol=1e-5, atol=1e-5)
    finally:
        m.close()
        plain.close()


def test_a_styled_member_scores_in_one_pass_and_resets_its_cache(batched_prefix, smol) -> None:
    from unite_llm.members.base import token_logprobs

    ctx = smol.tokenize(b"The capital of France is Paris.", add_bos=True)
    prefix = smol.tokenize(b"Hello there.\n", add_bos=False)
    got = token_logprobs(batched_prefix, ctx, 1)  # the inner member's batched score() of the prefixed text
    lead = 0 if smol.vocab.pieces[ctx[0]] else 1  # the prefix goes after a BOS (SmolLM2 adds none)
    want = token_logprobs(smol, ctx[:lead] + prefix + ctx[lead:], 1 + len(prefix))
    np.testing.assert_allclose(got, want, atol=1e-3)
    batched_prefix.next_logits(ctx)
    assert batched_prefix.inner._context
    batched_prefix.reset()
    assert batched_prefix.inner._context == []  # reset reached the inner member's KV cache


def test_a_restyled_member_is_scored_position_by_position(styled, smol) -> None:
    from unite_llm.members.base import log_softmax, token_logprobs

    ctx = smol.tokenize(b"The capital of France is", add_bos=True)
    got = token_logprobs(styled, ctx, len(ctx) - 1)
    want = log_softmax(np.array(styled.next_logits(ctx[:-1])))[ctx[-1]]
    assert got[0] == pytest.approx(want, abs=1e-4)


def test_an_ensemble_batches_a_styled_member(batched_prefix) -> None:
    from unite_llm.engine import Ensemble

    ens = Ensemble([batched_prefix])
    assert ens.max_batch == 2
    outs = ens.generate_batch(["The capital of France is", "One, two,"], max_new_tokens=3)
    assert len(outs) == 2 and all(len(o.steps) == 3 for o in outs)
