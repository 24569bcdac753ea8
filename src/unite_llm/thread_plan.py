"""The thread plan: members one after the other with every core, or side by side with a share.

An ensemble step waits for its slowest member.  Stepping members in threads, each with
``cores / n`` threads, costs ``max_i t_i(cores / n)``; stepping them one after the other,
each with every core (a waiting member lends its cores to the working one), costs
``sum_i t_i(cores)``.  For members of like size the first wins; for unequal ones (a 1.5B
primary beside a 270M partner) the second does, because the big member's decode barely
speeds up when the small one finishes early.  Rather than guess from file sizes, the plan
times one decode of each member both ways at load (``decode_ms``, a few milliseconds to a
few hundred) and takes the faster, with a small margin in favour of one after the other
(its cost does not depend on how well two threads share the cores).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

log = logging.getLogger("unite_llm")

MARGIN = 0.95
"""Side by side must be at least 5 % faster to be chosen."""


def plan_threads(members: Sequence[Any], cores: int) -> bool:
    """Whether ``members`` (in-process llama.cpp members, loaded with every core) should step
    in parallel threads; sets each member's threads to the plan's and returns the choice."""
    if len(members) < 2 or cores < 2:
        return False
    share = max(1, cores // len(members))
    full = [m.decode_ms(cores) for m in members]
    split = [m.decode_ms(share) for m in members]
    parallel = max(split) < MARGIN * sum(full)
    for m in members:
        m.set_threads(share if parallel else cores)
    log.info(
        "thread plan: %s (one after the other, %d threads each: %.1f ms; side by side, %d each: %.1f ms)",
        "side by side" if parallel else "one after the other",
        cores,
        sum(full),
        share,
        max(split),
    )
    return parallel


__all__ = ["plan_threads"]
