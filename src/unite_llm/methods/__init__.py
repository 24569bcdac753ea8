"""Step methods: pure functions from the members' next-token scores to a distribution
over candidates.  ``make_method`` builds one by name (the CLI's ``--method``).

Methods are registered by name, as members are: the built-in ones below, and those of
other packages through the ``unite_llm.methods`` entry-point group (``name =
"module:Class"``; the class takes ``k`` and keyword settings and returns a
:class:`~unite_llm.methods.base.StepMethod`).  Targets are imported only when a method is
built, so listing the names imports no method module and no method module imports the
decode loop; entry points are read only for names that are not built in.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from ..errors import InvalidConfigError
from .base import END, BatchView, Candidate, MemberScores, ResponseMethod, StepDistribution, StepMethod

# Every built-in --method name.  The baselines sit beside UniTE so that `unite generate` and
# `unite eval` compare them in the same engine: same members, decode loop and harness.
BUILTIN_METHODS: dict[str, str] = {
    "unite": "unite_llm.methods.unite:UniTE",
    "gac": "unite_llm.methods.gac:GaC",  # full union vocabulary
    "deepen": "unite_llm.methods.deepen:DeePEn",  # relative-representation space, all anchors (memory-checked)
    "deepen-fit": "unite_llm.methods.deepen:DeePEnFit",  # DeePEn with the most anchors that fit the memory budget
    "packllm": "unite_llm.methods.packllm:PackLLM",  # UniTE with per-prompt perplexity weights
    "rank": "unite_llm.rank:Rank",  # response level: best of the members' own answers
}


def registered_methods() -> dict[str, str]:
    """Method name -> ``"module:attribute"``: the built-in ones, then entry points."""
    found = dict(BUILTIN_METHODS)
    for ep in entry_points(group="unite_llm.methods"):
        found.setdefault(ep.name, ep.value)
    return found


METHODS = registered_methods()
"""The method names known when this module was imported (``registered_methods()`` re-reads)."""


def _import(target: str) -> Callable[..., StepMethod | ResponseMethod]:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def make_method(name: str, *, k: int = 10, **options: Any) -> StepMethod | ResponseMethod:
    """A method by name (a step method, or a response-level one), with its settings checked."""
    target = BUILTIN_METHODS.get(name) or registered_methods().get(name)  # entry points scanned only for others
    if target is None:
        raise InvalidConfigError(f"unknown method {name!r} (known: {', '.join(sorted(registered_methods()))})")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InvalidConfigError(f"k must be an integer >= 1, got {k!r}")
    try:
        factory = _import(target)
    except (ImportError, AttributeError) as err:
        raise InvalidConfigError(f"method {name!r} is registered as {target}, which cannot be imported: {err}") from err
    method = factory(k=k, **options)
    if not isinstance(method, StepMethod | ResponseMethod):
        raise InvalidConfigError(f"method {name!r} ({target}) does not build a StepMethod or ResponseMethod")
    return method


__all__ = [
    "BUILTIN_METHODS",
    "END",
    "METHODS",
    "BatchView",
    "Candidate",
    "MemberScores",
    "ResponseMethod",
    "StepDistribution",
    "StepMethod",
    "make_method",
    "registered_methods",
]
