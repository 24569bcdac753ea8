"""Step methods: pure functions from the members' next-token scores to a distribution
over candidates.  ``make_method`` builds one by name (the CLI's ``--method``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import InvalidConfigError
from .base import END, Candidate, MemberScores, StepDistribution, StepMethod
from .unite import UniTE

METHODS: dict[str, Callable[..., StepMethod]] = {
    "unite": UniTE,
}


def make_method(name: str, *, k: int = 10, **options: Any) -> StepMethod:
    """A step method by name, with its settings checked."""
    if name not in METHODS:
        raise InvalidConfigError(f"unknown method {name!r} (known: {', '.join(sorted(METHODS))})")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InvalidConfigError(f"k must be an integer >= 1, got {k!r}")
    return METHODS[name](k=k, **options)


__all__ = ["END", "METHODS", "Candidate", "MemberScores", "StepDistribution", "StepMethod", "UniTE", "make_method"]
