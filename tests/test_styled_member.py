"""The restyled member used for the Fig. 2 experiment, on the real SmolLM2 model."""

from __future__ import annotations

import numpy as np
import pytest

from unite_llm.errors import InvalidConfigError
from unite_llm.members import load_member
from unite_llm.members.styled import SUPPRESSED_LOGIT, parse_style


@pytest.fixture(scope="module")
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
