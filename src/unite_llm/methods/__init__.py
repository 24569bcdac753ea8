"""Step methods: pure functions from the members' next-token scores to a distribution
over candidates.  ``make_method`` builds one by name (the CLI's ``--method``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import InvalidConfigError
from .base import END, Candidate, MemberScores, StepDistribution, StepMethod
from .deepen import DeePEn
from .gac import GaC
from .packllm import PackLLM
from .rank import Rank
from .unite import UniTE


def _deepen_fit(k: int = 10, **options: Any) -> DeePEn:
    return DeePEn(k=k, fit=True, **options)


# Every --method name.  The baselines sit beside UniTE so that `unite generate` and
# `unite eval` compare them in the same engine: same members, decode loop and harness.
METHODS: dict[str, Callable[..., StepMethod]] = {
    "unite": UniTE,
    "gac": GaC,  # full union vocabulary
    "deepen": DeePEn,  # relative-representation space, all anchors (memory-checked)
    "deepen-fit": _deepen_fit,  # DeePEn with the most anchors that fit the memory budget
    "packllm": PackLLM,  # UniTE with per-prompt perplexity weights
    "rank": Rank,  # type: ignore[dict-item]  # response level: best of the members' own answers
}


def make_method(name: str, *, k: int = 10, **options: Any) -> StepMethod:
    """A step method by name, with its settings checked."""
    if name not in METHODS:
        raise InvalidConfigError(f"unknown method {name!r} (known: {', '.join(sorted(METHODS))})")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InvalidConfigError(f"k must be an integer >= 1, got {k!r}")
    return METHODS[name](k=k, **options)


__all__ = [
    "END",
    "METHODS",
    "Candidate",
    "DeePEn",
    "GaC",
    "MemberScores",
    "PackLLM",
    "Rank",
    "StepDistribution",
    "StepMethod",
    "UniTE",
    "make_method",
]
