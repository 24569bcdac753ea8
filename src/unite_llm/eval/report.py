"""Reports of a run: summary JSON, a Markdown table like the paper's Table 3, a bar chart.

The table has one row per system (each member alone, then each ensemble method) and one
column per task; an ensemble's cell also shows its difference from the *best single
member on that task*, which is the comparison the paper's claims rest on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PRETTY = {
    "gsm8k": "GSM8K",
    "triviaqa": "TriviaQA",
    "nq": "NQ",
    "arc_challenge": "ARC-C",
    "arc_easy": "ARC-E",
    "piqa": "PIQA",
    "mmlu": "MMLU",
    "lambada": "LAMBADA",
    "cmmlu": "CMMLU",
}


def task_order(summary: dict[str, Any]) -> list[str]:
    """Tasks in the paper's column order (Table 3), others after them as run."""
    known = list(PRETTY)
    return sorted(summary["tasks"], key=lambda t: known.index(t) if t in known else len(known))


def _systems(summary: dict[str, Any]) -> list[dict[str, Any]]:
    return summary["systems"]


def best_single(summary: dict[str, Any], task: str) -> tuple[str, float] | None:
    """The single member with the highest accuracy on ``task`` (first listed wins a tie)."""
    rows = summary["tasks"][task]["systems"]
    best = None
    for s in _systems(summary):
        if s["method"] == "single" and s["label"] in rows:
            acc = rows[s["label"]]["accuracy"]
            if best is None or acc > best[1]:
                best = (s["label"], acc)
    return best


def markdown_table(summary: dict[str, Any]) -> str:
    tasks = task_order(summary)
    systems = _systems(summary)
    head = "| system | " + " | ".join(PRETTY.get(t, t) for t in tasks) + " | avg |"
    lines = [head, "|" + "---|" * (len(tasks) + 2)]
    for s in systems:
        cells = []
        accs = []
        for t in tasks:
            row = summary["tasks"][t]["systems"].get(s["label"])
            if row is None:
                cells.append("–")
                continue
            accs.append(row["accuracy"])
            cell = f"{row['accuracy']:.1f}"
            best = best_single(summary, t)
            if s["method"] != "single" and best is not None:
                cell += f" ({row['accuracy'] - best[1]:+.1f})"
            cells.append(cell)
        avg = f"{sum(accs) / len(accs):.1f}" if accs and len(accs) == len(tasks) else "–"
        if s["method"] != "single" and accs and len(accs) == len(tasks):
            bests = [best_single(summary, t) for t in tasks]
            if all(b is not None for b in bests):
                avg += f" ({sum(accs) / len(accs) - sum(b[1] for b in bests if b) / len(bests):+.1f})"
        name = s["label"] if s["method"] == "single" else f"**{s['label']}**"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {avg} |")
    lines.append("| N (items) | " + " | ".join(str(summary["tasks"][t]["n"]) for t in tasks) + " | |")
    out = ["Accuracy (%); for an ensemble, (difference from the best single member on that task, in points).", "", *lines]
    paired = [
        (t, s["label"], summary["tasks"][t]["systems"][s["label"]]["vs_best_single"])
        for t in tasks
        for s in systems
        if "vs_best_single" in summary["tasks"][t]["systems"].get(s["label"], {})
    ]
    if paired:
        out += ["", "Ensemble minus the best single member on the same items (95 % paired bootstrap interval):", ""]
        out += ["| task | system | best single | difference (points) | 95 % CI |", "|---|---|---|---|---|"]
        for t, label, d in paired:
            lo, hi = d["ci95"]
            out.append(f"| {PRETTY.get(t, t)} | {label} | {d['best']} | {d['delta']:+.1f} | [{lo:+.1f}, {hi:+.1f}] |")
    out += ["", "95 % Wilson intervals, mean generated tokens and seconds per item:", ""]
    out.append("| task | system | N | acc | 95 % CI | tokens | chars | s/item | union |")
    out.append("|---|---|---|---|---|---|---|---|---|")
    for t in tasks:
        for s in systems:
            row = summary["tasks"][t]["systems"].get(s["label"])
            if row is None:
                continue
            lo, hi = row["ci95"]
            out.append(
                f"| {PRETTY.get(t, t)} | {s['label']} | {row['n']} | {row['accuracy']:.1f} | [{lo:.1f}, {hi:.1f}] | "
                f"{row['mean_tokens']:.1f} | {row['mean_chars']:.0f} | {row['mean_time_s']:.2f} | {row['mean_union']:.1f} |"
            )
    skipped = [
        (t, s["label"], row["errors"])
        for t in tasks
        for s in systems
        if (row := summary["tasks"][t]["systems"].get(s["label"])) and row.get("errors")
    ]
    if skipped:  # --on-error skip: items the system could not run, counted as incorrect
        out += ["", 'Items skipped after an error (--on-error skip; counted as incorrect, each line has its "error"):', ""]
        out += ["| task | system | skipped |", "|---|---|---|"]
        out += [f"| {PRETTY.get(t, t)} | {label} | {n} |" for t, label, n in skipped]
    return "\n".join(out) + "\n"


def bar_chart(summary: dict[str, Any], path: str | Path) -> Path:
    """Grouped bars (one group per task, one bar per system) with 95 % CI whiskers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    tasks = task_order(summary)
    systems = _systems(summary)
    width = 0.8 / max(1, len(systems))
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(tasks) + 2), 4))
    x = np.arange(len(tasks))
    for j, s in enumerate(systems):
        accs, lows, highs = [], [], []
        for t in tasks:
            row = summary["tasks"][t]["systems"].get(s["label"])
            acc = row["accuracy"] if row else 0.0
            lo, hi = row["ci95"] if row else (0.0, 0.0)
            accs.append(acc)
            lows.append(max(0.0, acc - lo))
            highs.append(max(0.0, hi - acc))
        ax.bar(x + (j - (len(systems) - 1) / 2) * width, accs, width, yerr=[lows, highs], capsize=2, label=s["label"])
    ax.set_xticks(x, [f"{PRETTY.get(t, t)}\nN={summary['tasks'][t]['n']}" for t in tasks])
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Each member alone vs the ensemble (95 % Wilson intervals)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_reports(summary: dict[str, Any], out_dir: str | Path, *, chart: bool = True) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"summary": out / "summary.json", "table": out / "table.md"}
    paths["summary"].write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    header = f"# {summary.get('title', 'Evaluation')}\n\nCommand: `{summary.get('command', '')}`\n\n"
    paths["table"].write_text(header + markdown_table(summary), encoding="utf-8")
    if chart:
        paths["chart"] = bar_chart(summary, out / "chart.png")
    return paths
