"""The confidence gate: when the partners get a say at all.

Where the primary member is sure of its next token, UniTE almost always follows it
anyway; asking the partners there costs their forward pass and, when a partner is
confidently wrong, can overturn a right answer.  The gate reads the primary's own
next-token distribution (its full softmax) and opens only below a threshold:

    signal "top1":    p_primary(top-1)                    < threshold  -> ensemble this step
    signal "margin":  p_primary(top-1) - p_primary(top-2) < threshold  -> ensemble this step
    otherwise: the primary's own step (its top-k, its token), partners not run

(GaC's thresholded mode and AdaFuse gate on the same signals.)  A closed step does not run
the partners at all: their token tracks still receive the appended text, and the next time
the gate opens each partner evaluates the text it missed in one multi-token decode, so its
KV cache holds exactly what stepping every token would have given it (:mod:`unite_llm.engine`).

``threshold=0`` never opens (the primary alone, token for token); ``threshold=1`` with
``"margin"``, or any ``threshold > 1``, always opens (plain UniTE).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from ..mathops import top_two_probs

SIGNALS: Final = ("top1", "margin")


@dataclass(frozen=True)
class Gate:
    """Open (consult the partners) where the primary's confidence is below ``threshold``."""

    threshold: float
    signal: str = "top1"

    def __post_init__(self) -> None:
        from ..errors import InvalidConfigError

        t = self.threshold
        if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t) or t < 0:
            raise InvalidConfigError(f"gate threshold must be a finite number >= 0, got {t!r}")
        if self.signal not in SIGNALS:
            raise InvalidConfigError(f"gate signal must be one of {', '.join(SIGNALS)}, got {self.signal!r}")

    def confidence(self, scores: Any, size: int) -> np.ndarray:
        """The primary's confidence per row: ``scores`` is one ``[vocab]`` vector or ``[rows, vocab]``
        (numpy, or a torch tensor, reduced where it lives); ``size`` is the vocabulary's length."""
        if type(scores).__module__.startswith("torch"):
            top = top_two_probs(scores[..., :size])
        else:
            from ..scores import dense

            top = top_two_probs(dense(scores, size) if np.ndim(scores) <= 1 else np.asarray(scores)[..., :size])
        top = np.atleast_2d(top)
        return top[:, 0] if self.signal == "top1" else top[:, 0] - top[:, 1]

    def is_open(self, scores: Any, size: int) -> np.ndarray:
        """Per row: whether the partners are consulted this step."""
        return self.confidence(scores, size) < self.threshold


def make_gate(value: Gate | float | dict[str, Any] | None) -> Gate | None:
    """A gate from its settings: a :class:`Gate`, a threshold, ``{"threshold": .., "signal": ..}``,
    or ``None`` (no gate: every step ensembled)."""
    from ..errors import InvalidConfigError

    if value is None or isinstance(value, Gate):
        return value
    if isinstance(value, dict):
        unknown = set(value) - {"threshold", "signal"}
        if unknown or "threshold" not in value:
            raise InvalidConfigError(f"gate takes threshold (required) and signal, got {sorted(value)}")
        return Gate(**value)
    return Gate(value)


__all__ = ["SIGNALS", "Gate", "make_gate"]
