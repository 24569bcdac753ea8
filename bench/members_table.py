"""The four-model table: every member alone, every UniTE pair, each pair against the best member.

Reads a ``unite eval`` folder in which single members and several UniTE pairs were run
(each pair by its own ``unite eval`` call, so no single run's report holds them all) and,
where present, the Determine-Then-Ensemble decisions written by ``unite select --report``
into ``FOLDER/select/<task>.json``.  Per task it writes one row per system with accuracy and
95 % Wilson interval, and for every pair the paired bootstrap difference against the best
single member *of the task* and against the better of its own two members, on the items
both finished.  A pair is marked admitted or rejected by the selection rule.

    .venv/bin/python bench/members_table.py results/members4
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from accuracy_table import load
from unite_llm.eval.scoring import paired_difference, wilson_interval

TASK_ORDER = ["triviaqa", "nq", "lambada", "arc_challenge", "piqa", "mmlu", "gsm8k"]
NAMES = dict(zip(TASK_ORDER, ["TriviaQA", "NQ", "LAMBADA", "ARC-C", "PIQA", "MMLU", "GSM8K"]))
SHORT = {
    "qwen2.5-coder-1.5b-instruct": "Qwen-1.5B",
    "qwen2.5-coder-0.5b-instruct": "Qwen-0.5B",
    "gemma3-270m": "Gemma",
    "smollm2-135m-instruct": "SmolLM2",
}


def members_of(label: str) -> list[str]:
    """``unite(a+b)`` -> ``[a, b]``; a single member's label -> ``[label]``."""
    inner = label[label.index("(") + 1 : label.rindex(")")] if "(" in label else label
    return inner.split("+")


def short(label: str) -> str:
    return " + ".join(SHORT.get(m, m) for m in members_of(label))


def verdicts(folder: Path, task: str) -> dict[str, str]:
    path = folder / "select" / f"{task}.json"
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return {d["candidate"]: d["verdict"] for d in data.get("decisions", [])}


def rate(recs: list[dict]) -> tuple[float, float, float]:
    k = sum(bool(r["correct"]) for r in recs)
    lo, hi = wilson_interval(k, len(recs))
    return 100 * k / len(recs), 100 * lo, 100 * hi


def selection_table(folder: Path) -> list[str]:
    """One row per task: each candidate's held-out score and the rule's verdict."""
    rows = []
    for task in TASK_ORDER:
        path = folder / "select" / f"{task}.json"
        if not path.is_file():
            continue
        d = json.loads(path.read_text())
        by = {x["candidate"]: x for x in d["decisions"]}
        n = max(x["n"] for x in d["decisions"])
        cells = [f"{by[m]['score']:.0f} {by[m]['verdict']}" if m in by else "-" for m in SHORT]
        rows.append(f"| {NAMES.get(task, task)} | {d['split']} | {n} | " + " | ".join(cells) + " |")
    if not rows:
        return []
    head = "| task | held-out split | N | " + " | ".join(SHORT.values()) + " |"
    return [
        "## Determine: the selection rule on held-out items (score %, verdict)",
        "",
        head,
        "|---|---|---:|" + "---|" * len(SHORT),
        *rows,
        "",
    ]


def table(folder: Path, title: str) -> tuple[str, dict]:
    data = load(folder)
    summary: dict = {}
    lines = [f"# {title}", "", *selection_table(folder)]
    for task in [t for t in TASK_ORDER if t in data] + sorted(set(data) - set(TASK_ORDER)):
        per = data[task]
        singles = sorted((s for s in per if "(" not in s), key=lambda s: -rate(list(per[s].values()))[0])
        pairs = sorted(s for s in per if "(" in s)
        if not singles:
            continue
        best = singles[0]
        rule = verdicts(folder, task)
        entry: dict = {"best_single": best, "systems": {}, "selection": rule}
        lines += [
            f"## {NAMES.get(task, task)}",
            "",
            "| system | selection | N | accuracy % | 95 % CI | vs best member (paired 95 % CI) | vs better of its pair |",
            "|---|---|---:|---:|---|---|---|",
        ]
        for s in singles + pairs:
            recs = list(per[s].values())
            acc, lo, hi = rate(recs)
            row = {"n": len(recs), "accuracy": acc, "ci95": [lo, hi]}
            cells = [short(s), rule.get(s, "") if "(" not in s else "", str(len(recs)), f"{acc:.1f}", f"[{lo:.1f}, {hi:.1f}]"]
            if "(" in s:
                ms = members_of(s)
                admitted = all(rule.get(m) in ("primary", "selected") for m in ms) if rule else None
                cells[1] = {True: "admitted", False: "rejected", None: "?"}[admitted]
                row["admitted"] = admitted
                alone = [m for m in ms if m in per]
                own = max(alone, key=lambda m: rate(list(per[m].values()))[0]) if len(alone) == len(ms) else None
                for key, ref in (("vs_best", best), ("vs_own_best", own)):
                    if ref is None:  # a member not yet evaluated alone on this task
                        cells.append("- (a member's own run is missing)")
                        continue
                    both = sorted(set(per[s]) & set(per[ref]))
                    delta, (dlo, dhi) = paired_difference(
                        [per[s][i]["correct"] for i in both], [per[ref][i]["correct"] for i in both]
                    )
                    row[key] = {"ref": ref, "n": len(both), "delta": delta, "ci95": [dlo, dhi]}
                    mark = "**" if dlo > 0 or dhi < 0 else ""
                    cells.append(f"{mark}{delta:+.1f} [{dlo:+.1f}, {dhi:+.1f}]{mark} (N={len(both)}, vs {short(ref)})")
            else:
                cells += ["", ""]
            entry["systems"][s] = row
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        summary[task] = entry
    lines += [
        "Selection: the verdict of `unite select` (Determine-Then-Ensemble: within 10 points of the best",
        "candidate and within 2x its mean answer length, on held-out items; see `select/<task>.md`); a pair is",
        "admitted when both of its members are. Differences are in points, paired bootstrap on the items both",
        "systems finished; bold when the interval excludes 0.",
    ]
    return "\n".join(lines) + "\n", summary


def chart(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(summary)
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        systems = summary[task]["systems"]
        labels = list(systems)
        accs = [systems[s]["accuracy"] for s in labels]
        errs = [
            [a - systems[s]["ci95"][0] for s, a in zip(labels, accs)],
            [systems[s]["ci95"][1] - a for s, a in zip(labels, accs)],
        ]
        colours = []
        for s in labels:
            if "(" not in s:
                colours.append("#888888")
            else:
                colours.append({True: "#2a9d8f", False: "#e76f51"}.get(systems[s].get("admitted"), "#457b9d"))
        ax.bar(range(len(labels)), accs, yerr=errs, color=colours, capsize=2)
        ax.set_xticks(range(len(labels)), [short(s).replace(" + ", "+\n") for s in labels], rotation=90, fontsize=7)
        ax.set_title(NAMES.get(task, task))
        ax.set_ylabel("accuracy %")
    fig.suptitle("Members alone (grey), UniTE pairs the rule admits (green) and rejects (red); 95 % Wilson intervals")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder")
    ap.add_argument("--title", default="Four real models: each alone and UniTE pairs")
    args = ap.parse_args()
    folder = Path(args.folder)
    md, summary = table(folder, args.title)
    (folder / "table_pairs.md").write_text(md)
    (folder / "summary_pairs.json").write_text(json.dumps(summary, indent=2) + "\n")
    chart(summary, folder / "chart_pairs.png")
    print(md)


if __name__ == "__main__":
    main()
