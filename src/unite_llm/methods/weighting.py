"""Per-step weighting rules: how much say each member gets at this step.

A step method returns each member's distribution over the candidates
(``StepDistribution.member_probs``) and mixes them with the ensemble's prior weights.  A
weighting rule rewrites those weights from what the members say at this step, before the
mix; rules compose in order, each seeing the previous one's weights, as transformers'
LogitsProcessors do:

    w  <- prior weights (the ensemble's, or PackLLM's per-prompt ones)
    w  <- rule_1(w, member_probs, primary); w <- rule_2(...); ...
    p  <- w @ member_probs                              (renormalised)

* ``entropy``: confidence weights (CoRE-style): ``w_i <- w_i * exp(-H_i)``, ``H_i`` the
  entropy of member i's distribution over the union; a member that spreads its mass says less.
* ``floor=F``: the primary keeps at least weight ``F`` (the partners share the rest in
  proportion to their weights), so no partner can outvote it by more than ``1 - F`` of the mix.

The rules are named in settings as ``"entropy"`` and ``"floor=0.6"``
(:func:`make_rules`); a list of them is the ensemble's ``weighting``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidConfigError


class WeightRule:
    """Base of the weighting rules: ``rule(weights, member_probs, primary) -> weights``."""

    name: str = "?"
    needs_primary: bool = False

    def __call__(self, weights: np.ndarray, member_probs: np.ndarray, primary: int | None) -> np.ndarray:
        raise NotImplementedError

    def spec(self) -> str:
        """The rule as it is written in settings (``"floor=0.6"``)."""
        return self.name


@dataclass(frozen=True)
class EntropyWeights(WeightRule):
    """Confidence weights: each member's weight times ``exp(-entropy)`` of its union distribution."""

    name = "entropy"

    def __call__(self, weights: np.ndarray, member_probs: np.ndarray, primary: int | None) -> np.ndarray:
        p = np.asarray(member_probs, dtype=np.float64)
        logp = np.log(p, out=np.zeros_like(p), where=p > 0)
        entropy = -(p * logp).sum(axis=-1)
        w = np.asarray(weights, dtype=np.float64) * np.exp(-entropy)
        return w / w.sum()


@dataclass(frozen=True)
class PrimaryFloor(WeightRule):
    """The primary's weight is at least ``floor``; the partners share the rest by their weights."""

    floor: float
    name = "floor"
    needs_primary = True

    def __post_init__(self) -> None:
        f = self.floor
        if isinstance(f, bool) or not isinstance(f, int | float) or not math.isfinite(f) or not 0 <= f <= 1:
            raise InvalidConfigError(f"floor must be a number in [0, 1], got {f!r}")

    def __call__(self, weights: np.ndarray, member_probs: np.ndarray, primary: int | None) -> np.ndarray:
        assert primary is not None  # checked when the ensemble is built (needs_primary)
        w = np.asarray(weights, dtype=np.float64) / np.sum(weights)
        if w[primary] >= self.floor or len(w) == 1:
            return w
        rest = np.delete(w, primary)
        out = np.insert(rest / rest.sum() * (1.0 - self.floor), primary, self.floor)
        return out

    def spec(self) -> str:
        return f"floor={self.floor:g}"


RULES: dict[str, Callable[..., WeightRule]] = {"entropy": EntropyWeights, "floor": PrimaryFloor}


def make_rule(spec: str | WeightRule) -> WeightRule:
    """``"entropy"`` or ``"floor=0.6"`` (a rule object passes through)."""
    if isinstance(spec, WeightRule):
        return spec
    if not isinstance(spec, str):
        raise InvalidConfigError(f"a weighting rule is a name such as 'entropy' or 'floor=0.6', got {spec!r}")
    name, _, arg = spec.partition("=")
    name = name.strip()
    if name not in RULES:
        raise InvalidConfigError(f"unknown weighting rule {name!r} (known: {', '.join(RULES)})")
    if name == "entropy":
        if arg:
            raise InvalidConfigError(f"weighting rule 'entropy' takes no value, got {spec!r}")
        return EntropyWeights()
    try:
        value = float(arg)
    except ValueError:
        raise InvalidConfigError(f"weighting rule {spec!r}: expected floor=F with F in [0, 1]") from None
    return PrimaryFloor(value)


def make_rules(specs: Sequence[str | WeightRule] | str | None) -> tuple[WeightRule, ...]:
    """The rules in order, from names (a comma-separated string or a list)."""
    if specs is None:
        return ()
    if isinstance(specs, str):
        specs = [s for s in specs.split(",") if s.strip()]
    return tuple(make_rule(s) for s in specs)


def apply_rules(rules: Sequence[WeightRule], weights: np.ndarray, member_probs: np.ndarray, primary: int | None) -> np.ndarray:
    """The mix of ``member_probs`` under the rules (renormalised to sum 1)."""
    w = np.asarray(weights, dtype=np.float64)
    for rule in rules:
        w = rule(w, member_probs, primary)
    probs = w @ np.asarray(member_probs, dtype=np.float64)
    return probs / probs.sum()


__all__ = ["RULES", "EntropyWeights", "PrimaryFloor", "WeightRule", "apply_rules", "make_rule", "make_rules"]
