"""``unite select``: Determine-Then-Ensemble, with a decision table that says why."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ._app import app, user_errors


def decision_table(report: Any) -> Any:
    from rich.table import Table

    sel = report.selection
    table = Table(
        title=f"Determine-Then-Ensemble on {report.task} ({report.split}, "
        f"gap {sel.gap:g} pts, length ratio {sel.length_ratio:g}x)"
    )
    for col in ("candidate", "score %", "95% CI", "N", "length (chars)", "tokens", "vocab", "gap", "ratio", "verdict", "reason"):
        table.add_column(col)
    for row in sel.table():
        lo, hi = row["ci95"] or (0, 0)
        colour = {"primary": "bold green", "selected": "green", "rejected": "red"}[row["verdict"]]
        table.add_row(
            row["candidate"],
            f"{row['score']:.1f}",
            f"[{lo:.1f}, {hi:.1f}]",
            str(row["n"]),
            f"{row['mean_chars']:.1f}",
            f"{row['mean_tokens']:.1f}",
            f"{row['vocab_size']:,}",
            f"{row['gap']:.1f}",
            f"{row['length_ratio']}",
            f"[{colour}]{row['verdict']}[/]",
            row["reason"],
        )
    return table


def verify_table(report: Any) -> Any:
    from rich.table import Table

    table = Table(title="--verify: the selection against the alternatives it rejected")
    for col in ("system", "members", "N", "accuracy %", "95% CI", "chars", "vs selected", "paired 95% CI"):
        table.add_column(col)
    for name, row in report.verify.items():
        lo, hi = row["ci95"]
        dlo, dhi = row["delta_ci95"]
        table.add_row(
            name,
            " + ".join(row["members"]),
            str(row["n"]),
            f"{row['accuracy']:.1f}",
            f"[{lo:.1f}, {hi:.1f}]",
            f"{row['mean_chars']:.1f}",
            f"{row['delta_vs_selected']:+.1f}",
            f"[{dlo:+.1f}, {dhi:+.1f}]",
        )
    return table


def markdown(report: Any) -> str:
    """The decision, verification and tuning tables as Markdown (for results/)."""
    d = report.to_dict()
    lines = [
        f"# Determine-Then-Ensemble on {d['task']} ({d['split']} split)",
        "",
        f"Rule: primary = best candidate; others join if within {d['gap']:g} points "
        f"and {d['length_ratio']:g}x mean length (characters).",
        "",
        "| candidate | score % | 95% CI | N | chars | tokens | vocab | gap | ratio | verdict | reason |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in d["decisions"]:
        lo, hi = r["ci95"]
        lines.append(
            f"| {r['candidate']} | {r['score']:.1f} | [{lo:.1f}, {hi:.1f}] | {r['n']} | "
            f"{r['mean_chars']:.1f} | {r['mean_tokens']:.1f} | "
            f"{r['vocab_size']:,} | {r['gap']:.1f} | {r['length_ratio']} | {r['verdict']} | {r['reason']} |"
        )
    if d["verify"]:
        lines += [
            "",
            "## Verification",
            "",
            "Difference = accuracy minus the selected ensemble's on the same items, with a 95 % paired bootstrap interval.",
            "",
            "| system | members | N | accuracy % | 95% CI (Wilson) | chars | difference | 95% CI of difference |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, r in d["verify"].items():
            lo, hi = r["ci95"]
            lines.append(
                f"| {name} | {' + '.join(r['members'])} | {r['n']} | {r['accuracy']:.1f} | "
                f"[{lo:.1f}, {hi:.1f}] | {r['mean_chars']:.1f} | {r['delta_vs_selected']:+.1f} | "
                f"[{r['delta_ci95'][0]:+.1f}, {r['delta_ci95'][1]:+.1f}] |"
            )
    if "best" in d["tuning"]:
        t = d["tuning"]
        lines += ["", f"## Weight/k tuning ({t['tune_n']} tuning items, {t['held_out_n']} held-out items)", ""]
        lines += ["| k | weights | tuning accuracy % |", "|---|---|---|"]
        for r in t["trials"]:
            lines.append(f"| {r['k']} | {r['weights'] or 'equal'} | {r['accuracy']:.1f} |")
        e, u = t["held_out_equal"], t["held_out_tuned"]
        lines += [
            "",
            f"Held-out: equal weights {e['accuracy']:.1f} % [{e['ci95'][0]:.1f}, {e['ci95'][1]:.1f}], "
            f"tuned (k={t['best']['k']}, weights={t['best']['weights'] or 'equal'}) {u['accuracy']:.1f} % "
            f"[{u['ci95'][0]:.1f}, {u['ci95'][1]:.1f}]: gain {t['gain_points']:+.1f} points.",
        ]
    if "gate" in d["tuning"]:
        g = d["tuning"]["gate"]
        lines += ["", f"## Gate tuning ({g['tune_n']} tuning items, {g['held_out_n']} held-out items)", ""]
        lines += ["| setting | tuning accuracy % | steps ensembled |", "|---|---|---|"]
        for r in g["trials"]:
            ensembled = f"{100 * r['ensembled']:.0f} %" if "ensembled" in r else "0 %"
            lines.append(f"| {r['name']} | {r['accuracy']:.1f} | {ensembled} |")
        v = g["held_out_vs_primary"]
        lines += [
            "",
            f"Held-out: {g['best']} {g['held_out_accuracy']:.1f} % vs primary alone {g['held_out_primary_alone']:.1f} % "
            f"(paired {v['diff']:+.1f} [{v['ci95'][0]:+.1f}, {v['ci95'][1]:+.1f}]).",
        ]
    return "\n".join(lines) + "\n"


def check_report_path(report: str) -> None:
    """``--report`` must be a writable file path (checked before any model runs)."""
    from ..errors import InvalidConfigError

    path = Path(report)
    if path.is_dir():
        raise InvalidConfigError(f"--report {path}: it is a directory; give a file path (.md)")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise InvalidConfigError(f"--report {path}: {parent} is not a folder")


@app.command("select")
@user_errors
def select_cmd(
    candidate: Annotated[
        list[str], typer.Option("--candidate", "-c", help="Candidate model (alias, .gguf, prefix:spec). Repeat.")
    ],
    task: Annotated[str, typer.Option("--task", "-t", help="Built-in task or task YAML file.")],
    limit: Annotated[Optional[int], typer.Option(help="Validation items to use (seeded subset).")] = 50,
    seed: int = 0,
    gap: Annotated[float, typer.Option(help="Max score gap to the primary, in points.")] = 10.0,
    length_ratio: Annotated[float, typer.Option("--length-ratio", help="Max ratio of mean response lengths.")] = 2.0,
    length_unit: Annotated[str, typer.Option("--length-unit", help="chars (comparable across tokenizers) or tokens.")] = "chars",
    write: Annotated[Optional[str], typer.Option("--write", help="Write the ensemble config here (.json/.yaml/.toml).")] = None,
    verify: Annotated[bool, typer.Option(help="Also evaluate the selected ensemble and each rejected addition.")] = False,
    tune_weights: Annotated[
        bool, typer.Option("--tune-weights", help="Search weights and k on half the items; report held-out gain.")
    ] = False,
    tune_gate: Annotated[
        bool,
        typer.Option(
            "--tune-gate",
            help="Choose the primary alone or a gate and primary floor on half the items; report it on the other half.",
        ),
    ] = False,
    k: Annotated[Optional[int], typer.Option("--k", help="Top-k per member (default: the config's, else 10).")] = None,
    method: Annotated[Optional[str], typer.Option(help="Ensemble method (default: the config's, else unite).")] = None,
    config: Annotated[
        Optional[str],
        typer.Option(
            "--config",
            help="Ensemble config whose settings (member options, chat templates, gate, weighting) the candidates "
            "load and ensemble with, and the written config keeps; its members are replaced by the candidates.",
        ),
    ] = None,
    setting: Annotated[str, typer.Option(help="Task variant: paper or small.")] = "paper",
    split: Annotated[str, typer.Option(help="validation (default; test if the task has none) or test.")] = "validation",
    out: Annotated[str, typer.Option(help="Folder for per-item results (cached: re-runs reuse them).")] = "runs/select",
    report: Annotated[Optional[str], typer.Option(help="Also write the tables as Markdown + JSON at this path (.md).")] = None,
    datasets: Annotated[Optional[str], typer.Option(help="Datasets folder.")] = None,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads per member.")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Pick the members to ensemble for a task (Determine-Then-Ensemble) and write a config."""
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see `unite eval`
    from rich.console import Console

    from ..config import EnsembleConfig
    from ..eval.runner import check_out_dir
    from ..select import run_selection

    if write:  # found only after the whole evaluation ran, before
        EnsembleConfig.check_writable(write)
    if report:
        check_report_path(report)
    check_out_dir(out)
    rep = run_selection(
        candidate,
        task,
        limit=limit,
        seed=seed,
        gap=gap,
        length_ratio=length_ratio,
        length_unit=length_unit,
        k=k,
        method=method,
        setting=setting,
        out=out,
        verify=verify,
        tune_weights=tune_weights,
        tune_gate=tune_gate,
        split=split,
        datasets_dir=datasets,
        progress=progress,
        member_options={"n_threads": threads} if threads else None,
        config=config,
    )
    import sys

    console = Console(width=None if sys.stdout.isatty() else 220)  # piped: do not squeeze the table to 80 columns
    console.print(decision_table(rep))
    if rep.verify:
        console.print(verify_table(rep))
    if "gate" in rep.tuning:
        g = rep.tuning["gate"]
        d, (lo, hi) = g["held_out_vs_primary"]["diff"], g["held_out_vs_primary"]["ci95"]
        console.print(
            f"gate tuning: best {g['best']} on {g['tune_n']} items; held-out ({g['held_out_n']} items): "
            f"{g['held_out_accuracy']:.1f}% vs primary alone {g['held_out_primary_alone']:.1f}% ({d:+.1f} [{lo:+.1f}, {hi:+.1f}])"
        )
    if "best" in rep.tuning:
        t = rep.tuning
        console.print(
            f"tuning: best k={t['best']['k']} weights={t['best']['weights'] or 'equal'}; held-out ({t['held_out_n']} items): "
            f"equal {t['held_out_equal']['accuracy']:.1f}% -> tuned {t['held_out_tuned']['accuracy']:.1f}% "
            f"({t['gain_points']:+.1f} points)"
        )
    console.print(f"selected: {', '.join(rep.config.members)}")
    if write:
        console.print(f"config written: {rep.config.write(write)}")
    if report:
        path = Path(report)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(markdown(rep), encoding="utf-8")
        path.with_suffix(".json").write_text(json.dumps(rep.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        console.print(f"report written: {path}")
