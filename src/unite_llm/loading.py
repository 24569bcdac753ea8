"""Loading an ensemble's members: per-member options, the CPU thread plan, forced chat templates.

:meth:`Ensemble.load <unite_llm.engine.Ensemble.load>` loads through :func:`load_members`,
and so do ``unite eval`` and ``unite select``, which load members once and share them
between the single-member and ensemble runs (:mod:`unite_llm.builder`).  One function, so
the thread split, ``n_seq`` and chat templates are the same whichever way an ensemble is made.

This module imports no decode loop (``engine`` imports it).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InvalidConfigError
from .members import Member, load_member, split_spec
from .prompts import force_chat_templates
from .thread_plan import plan_threads


@dataclass
class LoadedMembers:
    """Members loaded by :func:`load_members`, with the thread plan's decision."""

    members: list[Member]
    parallel: bool
    """Whether the members should step in threads (pass it to ``Ensemble(..., parallel=)``)."""
    load_s: float
    """Seconds the loading took (the thread plan's timing included)."""

    def close(self) -> None:
        for m in self.members:
            m.close()


def load_members(
    specs: Sequence[str],
    *,
    parallel: bool | None = None,
    gate: Any = None,
    ray_address: str | None = None,
    chat_templates: Mapping[str, str] | None = None,
    n_seq: int | None = None,
    **member_options: Any,
) -> LoadedMembers:
    """Load ``specs`` with ``member_options`` (every member) and decide the thread plan.

    With a ``gate`` (anything but None), members step one after the other (the primary first,
    then the partners where the gate opened), each with every core.  Without one and with
    ``parallel`` and ``n_threads`` unset, each in-process llama.cpp member's decode is timed
    at load, with every core and with its share of them, and members step in threads only
    where that is faster (:func:`~unite_llm.thread_plan.plan_threads`).  With ``parallel`` on
    and ``n_threads`` unset, in-process llama.cpp members split the cores between them.
    ``n_seq`` goes to in-process llama.cpp members only; ``chat_templates`` are forced on the
    members they name (by name or spec).  On an error every member loaded here is closed.
    """
    if ray_address is not None:
        from .members.ray_member import connect

        connect(ray_address)
    local = [s for s in specs if split_spec(s)[0] == "gguf"]
    auto = parallel is None and gate is None and member_options.get("n_threads") is None and len(local) > 1
    if gate is not None and parallel is None:
        parallel = False  # the primary decides first whether the partners run at all
    parallel = len(specs) > 1 if parallel is None else parallel
    local_options: dict[str, Any] = {}  # for the in-process llama.cpp members only
    if parallel and not auto and len(local) > 1 and member_options.get("n_threads") is None:
        local_options["n_threads"] = max(1, (os.cpu_count() or 1) // len(local))  # one core budget each
    if n_seq is not None:
        local_options["n_seq"] = n_seq
    t0 = time.perf_counter()
    members: list[Member] = []
    try:
        for spec in specs:
            members.append(load_member(spec, **member_options, **(local_options if spec in local else {})))
            _check_same_file(members, specs)
        force_chat_templates(members, chat_templates or {}, specs)
        if auto:
            parallel = plan_threads([m for m, s in zip(members, specs) if s in local], os.cpu_count() or 1)
    except BaseException:
        for m in members:
            m.close()
        raise
    return LoadedMembers(members, bool(parallel), time.perf_counter() - t0)


def _check_same_file(members: Sequence[Member], specs: Sequence[str]) -> None:
    """The newest member must not be a model file an earlier one already loaded (one GGUF
    given by alias and by path would be two members of one model: refused like one alias twice)."""
    new = getattr(members[-1], "path", None)
    if split_spec(specs[len(members) - 1])[0] != "gguf" or not isinstance(new, str | Path) or not Path(new).is_file():
        return
    for m, spec in zip(members[:-1], specs):
        old = getattr(m, "path", None) if split_spec(spec)[0] == "gguf" else None
        if isinstance(old, str | Path) and Path(old).is_file() and os.path.samefile(old, new):
            raise InvalidConfigError(
                f"members {spec!r} and {specs[len(members) - 1]!r} are the same model file ({new}): give it once"
            )


__all__ = ["LoadedMembers", "load_members"]
