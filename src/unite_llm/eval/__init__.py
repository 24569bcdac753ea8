"""The evaluation harness: tasks as data, resumable runs, reports.

::

    from unite_llm.eval import evaluate
    summary = evaluate(["triviaqa", "lambada"], ["smollm2-135m-instruct", "gemma3-270m"],
                       methods=["single", "unite"], limit=50, out="runs/eval")
    summary["tasks"]["triviaqa"]["systems"]["unite(smollm2-135m-instruct+gemma3-270m)"]["accuracy"]

Every member is loaded once and shared by all systems (a member alone and the ensemble
run on the same llama.cpp context, one after the other), so evaluating each member
alone next to the ensemble costs no extra model memory.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import InvalidConfigError, InvalidInputError
from .report import write_reports
from .runner import SINGLE, System, build_systems, check_on_error, check_out_dir, read_results, run_task, summarize
from .scoring import paired_difference, wilson_interval
from .tasks import PAPER_TASKS, RESULT_TASKS, Item, Task


def make_progress(enabled: bool = True) -> Any:
    """A rich progress bar (running accuracy in its description), or None."""
    if not enabled:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=False,
    )


def evaluate_systems(
    tasks: Sequence[str | Task],
    systems: Sequence[System],
    *,
    limit: int | dict[str, int] | None = None,
    seed: int = 0,
    out: str | Path = "runs/eval",
    setting: str = "paper",
    datasets_dir: str | Path | None = None,
    progress: bool = True,
    overwrite: bool = False,
    validation: bool = False,
    max_new_tokens: int | None = None,
    title: str = "Evaluation",
    command: str = "",
    reports: bool = True,
    drop_damaged: bool = False,
    batch_size: int = 1,
    on_error: str = "stop",
) -> dict[str, Any]:
    """Run every system on every task (resuming), write reports, return the summary.

    ``batch_size`` items decode at once; ``on_error`` is ``"stop"`` (an item the system cannot
    run, e.g. over a member's context, stops the run naming it) or ``"skip"`` (recorded as
    incorrect with its ``"error"``, counted as ``errors``); see :func:`~unite_llm.eval.runner.run_task`.
    """
    check_on_error(on_error)
    loaded = [t if isinstance(t, Task) else Task.load(t, setting=setting, datasets_dir=datasets_dir) for t in tasks]
    if isinstance(limit, dict):  # --limit TASK=N for a task not in the run is a typo, not a no-op
        stray = sorted(set(limit) - {"*"} - {t.name for t in loaded})
        if stray:
            raise InvalidConfigError(
                f"--limit for {', '.join(stray)}: not a task of this run (tasks: {', '.join(t.name for t in loaded)})"
            )
    check_out_dir(out)
    # Every task's items before any system runs: an empty task or a bad item fails now, not after hours.
    task_items = []
    for task in loaded:
        n = limit.get(task.name, limit.get("*")) if isinstance(limit, dict) else limit
        items = task.items(limit=n, seed=seed, validation=validation)
        if not items:
            raise InvalidInputError(f"task {task.name}: no items to evaluate (its data is empty, or --limit is 0)")
        task_items.append(items)
    summary: dict[str, Any] = {
        "title": title,
        "command": command,
        "limit": limit,
        "seed": seed,
        "setting": setting,
        "split": "validation" if validation else "test",
        "systems": [{"label": s.label, "method": s.method, "members": s.members, **s.settings} for s in systems],
        "tasks": {},
    }
    bar = make_progress(progress)
    if bar is not None:
        bar.start()
    try:
        for task, items in zip(loaded, task_items):
            entry: dict[str, Any] = {
                "n": len(items),
                "setting": task.setting,
                "paper_setting": task.spec.paper_setting,
                "metric": task.spec.metric,
                "systems": {},
            }
            verdicts: dict[str, list[bool]] = {}
            for system in systems:
                results = run_task(
                    task,
                    system,
                    items,
                    out,
                    progress=bar,
                    overwrite=overwrite,
                    max_new_tokens=max_new_tokens,
                    drop_damaged=drop_damaged,
                    batch_size=batch_size,
                    on_error=on_error,
                )
                entry["systems"][system.label] = summarize(results, by_group=task.spec.group_by is not None)
                verdicts[system.label] = [bool(r["correct"]) for r in results]
            _compare_with_best_single(entry, systems, verdicts)
            summary["tasks"][task.name] = entry
    finally:
        if bar is not None:
            bar.stop()
    if reports:
        write_reports(summary, out)
    return summary


def _compare_with_best_single(entry: dict[str, Any], systems: Sequence[System], verdicts: dict[str, list[bool]]) -> None:
    """Each ensemble's difference from the best single member on the same items (paired bootstrap CI)."""
    singles = [s.label for s in systems if s.method == SINGLE]
    if not singles:
        return
    best = max(singles, key=lambda label: entry["systems"][label]["accuracy"])  # first listed wins a tie
    for s in systems:
        if s.method != SINGLE:
            delta, ci = paired_difference(verdicts[s.label], verdicts[best])
            entry["systems"][s.label]["vs_best_single"] = {"best": best, "delta": delta, "ci95": ci}


def evaluate(
    tasks: Sequence[str | Task],
    models: Sequence[str],
    *,
    methods: Sequence[str] = (SINGLE, "unite"),
    k: int = 10,
    weights: Sequence[float] | None = None,
    primary: str | None = None,
    member_options: dict[str, Any] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Load ``models`` once, evaluate each alone and every ensemble method on ``tasks``
    (members loaded as ``unite eval`` loads them: :mod:`unite_llm.builder`)."""
    from ..builder import plan_ensemble

    plan = plan_ensemble(members=list(models), k=k, weights=weights, primary=primary, **(member_options or {}))
    loaded = plan.load_members()
    try:
        systems = build_systems(loaded.members, methods, k=k, weights=weights, primary=primary, parallel=loaded.parallel)
        return evaluate_systems(tasks, systems, **kwargs)
    finally:
        loaded.close()


def command_line() -> str:
    return " ".join(["unite", *sys.argv[1:]]) if sys.argv else ""


__all__ = [
    "PAPER_TASKS",
    "RESULT_TASKS",
    "SINGLE",
    "Item",
    "System",
    "Task",
    "build_systems",
    "evaluate",
    "evaluate_systems",
    "read_results",
    "run_task",
    "summarize",
    "wilson_interval",
    "write_reports",
]
