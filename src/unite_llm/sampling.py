"""Generation settings and the choice of one candidate from a step distribution.

Mirrors vLLM's ``SamplingParams``: temperature 0 is greedy; otherwise the union
distribution is tempered, cut to its top-p nucleus and sampled with a seeded
generator, so the same seed gives the same text.

Seeds follow llama.cpp, whose users pass ``-1`` for "any seed": ``-1`` (like no seed)
draws a fresh random one; any other negative integer is read as the unsigned 32-bit
number llama.cpp would read (``-2`` -> ``4294967294``); zero and positive integers are
used as given.  The CLI, the Python API and the server all go through this class, so
the rule is the same everywhere.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .errors import InvalidConfigError, as_utf8
from .mathops import softmax


@dataclass
class GenerationConfig:
    """How one generation runs (names follow transformers / vLLM)."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: Sequence[str] = field(default_factory=tuple)
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        # One check of types for every caller (CLI, API, server, config and task files): a
        # ``"hot"`` temperature or a ``true`` budget is a user error, not a TypeError or a 1.
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int | np.integer):
            raise InvalidConfigError(f"max_new_tokens must be an integer, got {self.max_new_tokens!r}")
        for name in ("temperature", "top_p"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
                raise InvalidConfigError(f"{name} must be a number, got {value!r}")
        if not isinstance(self.ignore_eos, bool | np.bool_):
            raise InvalidConfigError(f"ignore_eos must be true or false, got {self.ignore_eos!r}")
        if self.max_new_tokens < 0:
            raise InvalidConfigError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        # NaN passes a "< 0" test and only fails when sampling, after the models have loaded.
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise InvalidConfigError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise InvalidConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if isinstance(self.stop, str):
            self.stop = (self.stop,)
        if not isinstance(self.stop, Sequence) or any(not isinstance(s, str) for s in self.stop):
            raise InvalidConfigError(f"stop must be a string or a list of strings, got {self.stop!r}")
        if any(not s for s in self.stop):
            raise InvalidConfigError("stop strings must not be empty")
        for i, s in enumerate(self.stop):  # one encoding rule for user text: a lone surrogate is an error here
            as_utf8(s, f"stop string {i}" if len(self.stop) > 1 else "stop string", InvalidConfigError)
        self.seed = normalize_seed(self.seed)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def normalize_seed(seed: int | None) -> int | None:
    """A seed numpy accepts, by llama.cpp's rule (see the module docstring).

    numpy's generators refuse negative seeds; a user who types ``--seed -1`` (llama.cpp's
    "random") or sends ``"seed": -1`` must get an answer, not a traceback or a 500.
    """
    if seed is None:
        return None
    try:
        if isinstance(seed, bool):
            raise TypeError
        value = operator.index(seed)  # ints and numpy integers; not floats, strings or bools
    except TypeError:
        raise InvalidConfigError(f"seed must be an integer, got {seed!r}") from None
    if value == -1:
        return None
    return value % 2**32 if value < 0 else value


def choose(probs: np.ndarray, config: GenerationConfig, rng: np.random.Generator) -> int:
    """Index of the chosen candidate: argmax when greedy, else a seeded nucleus sample."""
    if config.greedy:
        return int(np.argmax(probs))  # ties go to the earliest candidate in union order
    logp = np.log(np.maximum(probs, 1e-300))
    # Shift before scaling: the best candidate stays at 0 for any temperature, so a tiny one
    # (5e-324) sends the others to -inf (probability 0), never -inf - -inf = NaN.
    with np.errstate(over="ignore"):
        z = (logp - logp.max()) / config.temperature
    p = softmax(np.where(probs > 0, z, -np.inf))
    order = np.argsort(-p, kind="stable")
    cum = np.cumsum(p[order])
    keep = order[: int(np.searchsorted(cum, config.top_p - 1e-12)) + 1]
    q = p[keep] / p[keep].sum()
    return int(keep[rng.choice(len(keep), p=q)])
