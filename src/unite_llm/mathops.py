"""The package's one softmax and one logsumexp (numpy, float64 unless a caller's memory says
otherwise), and the torch path where scores stay on a device.

Every step method, member and scorer normalises through these, so a change of numerics is
made once.  The float32 in-place forms serve callers that normalise vocabulary-sized blocks
and cannot afford a float64 copy (llama.cpp's scored chunks, DeePEn's relative matrix).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def logsumexp(values: Sequence[float] | np.ndarray, axis: int | None = None) -> Any:
    """``log sum exp(values)`` in float64: a float over all values (``axis=None``; empty is
    -inf), else an array reduced over ``axis``.  A row whose maximum is not finite gives that
    maximum (an all -inf row stays -inf)."""
    arr = np.asarray(values, dtype=np.float64)
    if axis is None:
        if arr.size == 0:
            return float("-inf")
        top = arr.max()
        if not np.isfinite(top):
            return float(top)
        return float(top + np.log(np.exp(arr - top).sum()))
    peak = arr.max(axis=axis, keepdims=True)
    finite = np.isfinite(peak)
    shift = np.where(finite, peak, 0.0)
    with np.errstate(divide="ignore"):
        out = np.squeeze(shift, axis=axis) + np.log(np.exp(arr - shift).sum(axis=axis))
    return np.where(np.squeeze(finite, axis=axis), out, np.squeeze(peak, axis=axis))


def softmax(scores: Sequence[float] | np.ndarray) -> np.ndarray:
    """Probabilities over the last axis, in float64; an all -inf row stays zero."""
    scores = np.asarray(scores, dtype=np.float64)
    top = scores.max(axis=-1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    exp = np.exp(scores - top)
    total = exp.sum(axis=-1, keepdims=True)
    return np.divide(exp, total, out=np.zeros_like(exp), where=total > 0)


def log_softmax(logits: Sequence[float] | np.ndarray) -> np.ndarray:
    """Normalised log-probabilities of one vector, in float64."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max()
    return shifted - np.log(np.exp(shifted).sum())


def softmax_rows_(block: np.ndarray) -> np.ndarray:
    """:func:`softmax` over the rows of ``block``, in place and in its own dtype (float32
    blocks too large to copy); finite rows only."""
    block -= block.max(axis=1, keepdims=True)
    np.exp(block, out=block)
    block /= block.sum(axis=1, keepdims=True)
    return block


def logsumexp_rows(rows: np.ndarray) -> np.ndarray:
    """:func:`logsumexp` of each row of a ``[n, vocab]`` float32 block, with one temporary of
    the block's size exponentiated in its dtype and summed in float64; ``rows`` is not
    modified."""
    peak = rows.max(axis=1, keepdims=True)
    shifted = rows - peak
    return peak[:, 0] + np.log(np.exp(shifted, out=shifted).sum(axis=1, dtype=np.float64))


def top_two_probs(scores: Any) -> np.ndarray:
    """``[..., 2]``: the two largest softmax probabilities of each row of ``scores`` (numpy or
    a torch tensor, reduced where it lives), best first, without a full probability vector
    on the host."""
    if type(scores).__module__.startswith("torch"):
        import torch

        probs = torch.softmax(scores.float(), dim=-1)
        return np.asarray(torch.topk(probs, 2, dim=-1).values.cpu().numpy())
    x = np.asarray(scores, np.float64)
    best = np.partition(x, -2, axis=-1)[..., -2:]  # the two largest, either order
    hi, lo = best.max(axis=-1, keepdims=True), best.min(axis=-1, keepdims=True)
    total = np.exp(x - hi).sum(axis=-1, keepdims=True)
    return np.concatenate([1.0 / total, np.exp(lo - hi) / total], axis=-1)


__all__ = ["log_softmax", "logsumexp", "logsumexp_rows", "softmax", "softmax_rows_", "top_two_probs"]
