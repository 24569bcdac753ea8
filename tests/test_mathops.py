"""The one softmax/logsumexp (:mod:`unite_llm.mathops`) gives, bit for bit, what each of the
copies it replaced computed (the old bodies are kept here as the reference)."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from unite_llm import mathops

finite = st.floats(-60.0, 60.0, allow_nan=False, allow_infinity=False, width=64)
vectors = hnp.arrays(np.float64, st.integers(1, 40), elements=finite)
tables = hnp.arrays(np.float64, st.tuples(st.integers(1, 5), st.integers(1, 12)), elements=finite)


def same(a: np.ndarray, b: np.ndarray) -> bool:
    return np.asarray(a).tobytes() == np.asarray(b).tobytes()


def old_full_softmax(x: np.ndarray) -> np.ndarray:  # methods/gac.py, methods/packllm.py
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max())
    return e / e.sum()


def old_log_softmax(x: np.ndarray) -> np.ndarray:  # members/base.py
    x = np.asarray(x, dtype=np.float64)
    shifted = x - x.max()
    return shifted - np.log(np.exp(shifted).sum())


@settings(max_examples=200, deadline=None)
@given(vectors)
def test_softmax_is_full_softmax(x: np.ndarray) -> None:
    assert same(mathops.softmax(x), old_full_softmax(x))
    assert same(mathops.log_softmax(x), old_log_softmax(x))


@settings(max_examples=200, deadline=None)
@given(tables)
def test_axis_logsumexp_is_choice_mixtures(lls: np.ndarray) -> None:
    top = lls.max(axis=1, keepdims=True)  # loglik.choice_mixture's log Z
    assert same(mathops.logsumexp(lls, axis=1), top[:, 0] + np.log(np.exp(lls - top).sum(axis=1)))
    for row, value in zip(lls, mathops.logsumexp(lls, axis=1)):
        assert value == mathops.logsumexp(row)


@settings(max_examples=100, deadline=None)
@given(hnp.arrays(np.float32, st.tuples(st.integers(1, 4), st.integers(2, 30)), elements=st.floats(-30, 30, width=32)))
def test_float32_forms(rows: np.ndarray) -> None:
    before = rows.copy()
    peak = rows.max(axis=1, keepdims=True)  # members/llama_cpp.py score
    shifted = rows - peak
    old = peak[:, 0] + np.log(np.exp(shifted, out=shifted).sum(axis=1, dtype=np.float64))
    assert same(mathops.logsumexp_rows(rows), old)
    assert same(rows, before)
    sims = rows.copy()  # methods/deepen.py relative_matrix
    sims -= sims.max(axis=1, keepdims=True)
    np.exp(sims, out=sims)
    sims /= sims.sum(axis=1, keepdims=True)
    assert same(mathops.softmax_rows_(rows.copy()), sims)


def test_edges() -> None:
    assert mathops.logsumexp([]) == -math.inf
    assert mathops.logsumexp([-math.inf, -math.inf]) == -math.inf
    assert list(mathops.logsumexp(np.full((2, 3), -np.inf), axis=1)) == [-math.inf, -math.inf]
    assert mathops.softmax(np.full(3, -np.inf)).tolist() == [0.0, 0.0, 0.0]
    np.testing.assert_allclose(mathops.top_two_probs(np.log([0.5, 0.3, 0.2])), [0.5, 0.3])
