"""The ensemble's settings checked before anything loads: member specs, weights, primary.

Each check names the setting and the value it refused (one message per rule, whatever
entry point the setting came from: Python, the CLI, a config file, lm-eval's model_args).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

from ..errors import InvalidConfigError
from ..members import split_spec


def checked_weights(weights: Sequence[float] | np.ndarray, n: int, who: str) -> np.ndarray:
    """Weights a step method's ``prepare`` returned, checked but used as given."""
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,) or not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise InvalidConfigError(f"{who}: prepare must return {n} positive finite weights, got {w.tolist()}")
    return w


def normalised_weights(weights: Sequence[float] | None, n: int) -> np.ndarray:
    if weights is None:
        return np.full(n, 1.0 / n)
    if isinstance(weights, str | bytes | Mapping) or not isinstance(weights, Sequence | np.ndarray):
        raise InvalidConfigError(f"weights must be a list of numbers, one per member, got {weights!r}")
    try:
        w = np.asarray(list(weights), dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidConfigError(f"weights must be positive numbers, got {list(weights)!r}") from None
    if w.ndim != 1 or any(isinstance(x, bool) for x in weights):
        raise InvalidConfigError(f"weights must be positive numbers, got {list(weights)!r}")
    if len(w) != n:
        raise InvalidConfigError(f"{len(w)} weights given for {n} members")
    if not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise InvalidConfigError(f"weights must be positive numbers, got {list(weights)}")
    return w / w.sum()


def checked_specs(specs: Any) -> list[str]:
    """Member specs as a list: one string is one spec (not its characters), anything else a
    list of non-empty strings."""
    if isinstance(specs, str):
        return [specs]
    if isinstance(specs, bytes) or not isinstance(specs, Sequence):
        raise InvalidConfigError(f"members must be a list of model specs (aliases, .gguf paths, prefix:...), got {specs!r}")
    bad = [s for s in specs if not isinstance(s, str) or not s.strip()]
    if bad:
        raise InvalidConfigError(f"a member spec must be a non-empty string, got {bad[0]!r}")
    if not specs:
        raise InvalidConfigError("an ensemble needs at least one member")
    return list(specs)


def check_distinct(specs: Sequence[str]) -> None:
    dupes = sorted({s for s in specs if specs.count(s) > 1})
    if dupes:
        raise InvalidConfigError(f"member {dupes[0]!r} is given more than once (member names must be unique)")


def default_name(spec: str) -> str | None:
    """The name an in-process llama.cpp member takes from its spec (None for other backends)."""
    if split_spec(spec)[0] != "gguf":
        return None
    return Path(spec).stem if spec.endswith(".gguf") else spec


def check_primary(primary: str | int | None, specs: Sequence[str]) -> None:
    """``primary`` checked against the specs before any model loads: an index in range, or a
    name one of the members will have (only where every member's name follows from its spec)."""
    if primary is None:
        return
    if isinstance(primary, bool) or not isinstance(primary, str | int):
        raise InvalidConfigError(f"primary must be a member name or index, got {primary!r}")
    if not specs:
        return
    if isinstance(primary, int):
        if not 0 <= primary < len(specs):
            raise InvalidConfigError(f"primary index {primary} out of range for {len(specs)} members")
        return
    names = [default_name(s) for s in specs]
    if None not in names and primary not in names and primary not in specs:
        raise InvalidConfigError(f"primary {primary!r} is not a member (members: {', '.join(cast('list[str]', names))})")
