"""Accuracy of every system on the items that *all* systems finished, from a ``unite eval`` folder.

``unite eval`` writes its own report when a run completes; a run stopped at a deadline
leaves systems with different numbers of finished items.  Comparing methods on
different items would be unfair, so this table keeps, per task, only the items every
system has a result for, and states that N.

    .venv/bin/python bench/accuracy_table.py results/baselines
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from unite_llm.eval.scoring import paired_difference, wilson_interval


def load(folder: Path) -> dict[str, dict[str, dict[str, dict]]]:
    """task -> system label -> item id -> record."""
    out: dict[str, dict[str, dict[str, dict]]] = {}
    for meta_path in sorted(folder.glob("*/*.meta.json")):
        meta = json.loads(meta_path.read_text())
        jsonl = meta_path.with_name(meta_path.name.removesuffix(".meta.json") + ".jsonl")
        if not jsonl.is_file():
            continue
        recs = {}
        for line in jsonl.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
            recs[r["id"]] = r
        out.setdefault(meta["task"], {})[meta["system"]] = recs
    return out


def table(data: dict[str, dict[str, dict[str, dict]]], title: str) -> tuple[str, dict]:
    systems = sorted({s for per in data.values() for s in per}, key=lambda s: ("(" in s, not s.startswith("unite("), s))
    summary: dict = {}
    header = "| task | N | " + " | ".join(s.split("(")[0] for s in systems) + " |"
    lines = [f"# {title}", "", header, "|---|---:|" + "---:|" * len(systems)]
    for task, per in sorted(data.items()):
        most = max(len(r) for r in per.values())
        # A system that finished under half of what the others did is left out (shown with
        # its count) rather than shrinking every other system's N.
        kept = [s for s in systems if len(per.get(s, {})) * 2 >= most and per.get(s)]
        common = set.intersection(*(set(per[s]) for s in kept)) if kept else set()
        if not common:
            continue
        row = [task, str(len(common))]
        summary[task] = {"n": len(common), "systems": {}}
        for s in systems:
            if s not in kept:
                row.append(f"- ({len(per.get(s, {}))} done)")
                continue
            recs = [per[s][i] for i in sorted(common)]
            k = sum(r["correct"] for r in recs)
            lo, hi = wilson_interval(k, len(recs))
            sec = sum(r["time_s"] for r in recs) / len(recs)
            summary[task]["systems"][s] = {"correct": k, "accuracy": k / len(recs), "ci95": [lo, hi], "s_per_item": sec}
            row.append(f"{100 * k / len(recs):.0f} ({sec:.1f}s)")
        lines.append("| " + " | ".join(row) + " |")
    # Every other ensemble against UniTE on the items *those two* finished: a baseline run
    # only part of the way (DeePEn's is slow) is still compared item for item.
    ref = next((s for s in systems if s.startswith("unite(")), None)
    others = [s for s in systems if "(" in s and s != ref]
    if ref is not None and others:
        lines += [
            "",
            f"Each baseline minus {ref.split('(')[0]} on the items both finished (95 % paired bootstrap interval):",
            "",
            "| task | baseline | N | baseline % | unite % | difference (points) | 95 % CI |",
            "|---|---|---:|---:|---:|---:|---|",
        ]
        for task, per in sorted(data.items()):
            for s in others:
                both = sorted(set(per.get(s, {})) & set(per.get(ref, {})))
                if not both:
                    continue
                a = [bool(per[s][i]["correct"]) for i in both]
                b = [bool(per[ref][i]["correct"]) for i in both]
                delta, (lo, hi) = paired_difference(a, b)
                summary.setdefault(task, {}).setdefault("vs_unite", {})[s] = {"n": len(both), "delta": delta, "ci95": [lo, hi]}
                lines.append(
                    f"| {task} | {s.split('(')[0]} | {len(both)} | {100 * sum(a) / len(a):.1f} | {100 * sum(b) / len(b):.1f} "
                    f"| {delta:+.1f} | [{lo:+.1f}, {hi:+.1f}] |"
                )
    lines += [
        "",
        "Systems: " + "; ".join(systems) + ".",
        "",
        "Cells: accuracy % on the N items every system finished (mean seconds per item); a system that finished",
        "under half of what the others did is left out of a row and shown with its count. 95 % Wilson intervals",
        "are in summary_common.json.",
    ]
    return "\n".join(lines) + "\n", summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder")
    ap.add_argument("--title", default="Accuracy on the items every system finished")
    args = ap.parse_args()
    folder = Path(args.folder)
    md, summary = table(load(folder), args.title)
    (folder / "table_common.md").write_text(md)
    (folder / "summary_common.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(md)


if __name__ == "__main__":
    main()
