"""``unite eval``: accuracy of each member alone and of the ensemble, on benchmark tasks."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ._app import app, plan_from_flags, user_errors
from .generate import ConfigOpt, GateOpt, ModelOpt, WeightingOpt


def parse_limits(values: list[str] | None) -> int | dict[str, int] | None:
    """``["300", "gsm8k=200"]`` -> ``{"*": 300, "gsm8k": 200}``; one plain N -> N."""
    from ..errors import InvalidConfigError

    if not values:
        return None
    out: dict[str, int] = {}
    for v in values:
        name, _, num = v.rpartition("=")
        try:
            n = int(num)
        except ValueError:
            raise InvalidConfigError(f"--limit {v!r}: expected N or TASK=N") from None
        if n < 1:
            raise InvalidConfigError(f"--limit {v!r}: N must be >= 1")
        out[name or "*"] = n
    return out["*"] if list(out) == ["*"] else out


@app.command("eval")
@user_errors
def eval_cmd(
    task: Annotated[
        list[str],
        typer.Option(
            "--task", "-t", help="Built-in task name or a task YAML file. Repeatable; 'paper' = the paper's six + LAMBADA."
        ),
    ],
    model: ModelOpt = None,
    config: ConfigOpt = None,
    method: Annotated[
        Optional[list[str]],
        typer.Option(
            help="'single' (each member alone) or an ensemble method. Repeatable. Default: single + the config's method."
        ),
    ] = None,
    limit: Annotated[
        Optional[list[str]],
        typer.Option(
            help="Seeded random subset of N items per task (nested: N=100 lies inside N=300); TASK=N for one task. Repeatable."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the item subset.")] = 0,
    out: Annotated[str, typer.Option(help="Folder for per-item JSONL, summary.json, table.md, chart.png.")] = "runs/eval",
    setting: Annotated[
        str, typer.Option(help="Task variant: 'paper' (the paper's prompts) or 'small' (few-shot for small models).")
    ] = "paper",
    datasets: Annotated[
        Optional[str], typer.Option(help="Datasets folder (default $UNITE_DATASETS or ../shared/datasets).")
    ] = None,
    k: Annotated[Optional[int], typer.Option("--k", help="Top-k per member.")] = None,
    weights: Annotated[Optional[str], typer.Option(help="Comma-separated member weights.")] = None,
    primary: Annotated[Optional[str], typer.Option(help="Primary member of the ensemble.")] = None,
    gate: GateOpt = None,
    weighting: WeightingOpt = None,
    max_new_tokens: Annotated[Optional[int], typer.Option("--max-new-tokens", "-n", help="Override the task's budget.")] = None,
    validation: Annotated[bool, typer.Option(help="Use the task's validation split.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Discard stored results made with other settings.")] = False,
    drop_damaged: Annotated[
        bool,
        typer.Option("--drop-damaged", help="Move stored result lines that cannot be read to <file>.damaged and continue."),
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    n_ctx: Annotated[Optional[int], typer.Option("--n-ctx", help="Context window per member.")] = None,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads per member.")] = None,
    title: Annotated[str, typer.Option(help="Title of table.md.")] = "Evaluation",
    batch_size: Annotated[
        int,
        typer.Option(
            "--batch-size",
            "-b",
            help="Items decoded at once (llama.cpp members keep that many sequences). 1: each item alone, "
            "outputs a function of the prompt only; larger batches can differ in rare near-ties.",
        ),
    ] = 1,
) -> None:
    """Evaluate members alone and as an ensemble; resumable (re-run to continue)."""
    import os

    # llama.cpp's OpenMP workers spin while they wait; on a shared, oversubscribed machine
    # that spinning starves everyone (measured here: 16x slower prefill).  Must be set
    # before llama.cpp is loaded.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from ..errors import InvalidConfigError
    from ..eval import RESULT_TASKS, Task, build_systems, command_line, evaluate_systems
    from ..methods import make_method

    tasks = [t for name in task for t in (RESULT_TASKS if name == "paper" else (name,))]
    loaded = [Task.load(t, setting=setting, datasets_dir=datasets) for t in tasks]  # bad task names fail before loading models
    if batch_size < 1:
        raise InvalidConfigError(f"--batch-size must be >= 1, got {batch_size}")
    # The ensemble's settings as generate and serve read them (unite_llm.builder); the members
    # load once, shared by the single-member systems and the ensembles.
    plan = plan_from_flags(
        model,
        config,
        k=k,
        weights=weights,
        primary=primary,
        n_ctx=n_ctx,  # 0: the trained context, as for generate
        threads=threads or None,
        n_seq=batch_size if batch_size > 1 else None,
        gate=gate,
        weighting=weighting,
    )
    settings = plan.ensemble
    methods = list(method) if method else ["single", settings["method"]]
    for m in methods:
        if m != "single":
            make_method(m, k=settings["k"])
    members = plan.load_members()
    try:
        systems = build_systems(
            members.members,
            methods,
            k=settings["k"],
            weights=settings["weights"],
            primary=settings["primary"],
            gate=settings["gate"],
            weighting=settings["weighting"],
            parallel=members.parallel,
        )
        summary = evaluate_systems(
            loaded,
            systems,
            limit=parse_limits(limit),
            seed=seed,
            out=out,
            setting=setting,
            progress=progress,
            overwrite=overwrite,
            drop_damaged=drop_damaged,
            validation=validation,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            title=title,
            command=command_line(),
        )
    finally:
        members.close()
    for name, entry in summary["tasks"].items():
        for label, row in entry["systems"].items():
            lo, hi = row["ci95"]
            typer.echo(f"{name}\t{label}\tN={row['n']}\tacc={row['accuracy']:.1f}% [{lo:.1f}, {hi:.1f}]")
    typer.echo(f"reports: {out}/summary.json, {out}/table.md, {out}/chart.png")
