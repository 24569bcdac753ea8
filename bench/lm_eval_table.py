"""Multiple-choice accuracy under lm-evaluation-harness: each member, UniTE pairs and all four.

Reads one lm-eval run of the ``unite`` model over several members, made with
``--log_samples`` (the per-document requests and the gold answer) and the model's
``scores_file`` (every member's log-likelihood of every request), and writes
``FOLDER/items/<task>.jsonl``, ``FOLDER/table.md`` and ``FOLDER/summary.json``.

The run's own files (``scores.jsonl``, ``lm_eval_out/``) hold the benchmarks' texts, so they
stay local (``.gitignore``): the datasets are never copied into the repository.
``items/<task>.jsonl`` keeps what the table needs and no text (per document: lm-eval's doc id
and hash, the gold index, each choice's length in characters, every member's log-likelihood of
every choice, and lm-eval's logged ``acc``/``acc_norm`` of the run's ensemble). Without the run's
files the table is rebuilt from ``items/`` alone.

The ensemble's log-likelihood of a continuation is the mixture of its members'
(``docs/lm_eval.md``), and a one-member ensemble's is exactly that member's, so one run over
all members gives every member's accuracy and every subset's, each computed here with
lm-eval's own rules (``acc``: the choice of highest log-likelihood; ``acc_norm``: highest
log-likelihood per character of the choice).  The run's own accuracy (the whole ensemble) is
recomputed too and checked against what lm-eval logged, so a mismatch between this script and
lm-eval cannot pass unnoticed.

    .venv/bin/python bench/lm_eval_table.py results/lm_eval
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from unite_llm.eval.scoring import paired_difference, wilson_interval
from unite_llm.loglik import mixture

NAMES = {"unite_arc_easy": "ARC-E", "unite_arc_challenge": "ARC-C", "unite_piqa": "PIQA", "unite_mmlu": "MMLU"}
SHORT = {
    "qwen2.5-coder-1.5b-instruct": "Qwen-1.5B",
    "qwen2.5-coder-0.5b-instruct": "Qwen-0.5B",
    "gemma3-270m": "Gemma",
    "smollm2-135m-instruct": "SmolLM2",
}


def short(members: tuple[str, ...]) -> str:
    return " + ".join(SHORT.get(m, m) for m in members)


def load_scores(path: Path) -> tuple[list[str], dict[tuple[str, str], np.ndarray]]:
    members: list[str] | None = None
    scores: dict[tuple[str, str], np.ndarray] = {}
    with path.open(encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            if members is None:
                members = row["members"]
            elif row["members"] != members:
                raise SystemExit(f"{path}: lines from different ensembles ({row['members']} after {members})")
            scores[(row["context"], row["continuation"])] = np.asarray(row["member_logliks"], dtype=np.float64)
    if members is None:
        raise SystemExit(f"{path} is empty")
    return members, scores


def requests_of(sample: dict[str, Any]) -> list[tuple[str, str]]:
    """A logged sample's ``(context, continuation)`` pairs, in choice order (lm-eval 0.4's two layouts)."""
    args = sample["arguments"]
    if isinstance(args, dict):  # {"gen_args_0": {"arg_0": context, "arg_1": continuation}, ...}
        return [(a["arg_0"], a["arg_1"]) for _, a in sorted(args.items(), key=lambda kv: int(kv[0].rsplit("_", 1)[1]))]
    return [(a[0], a[1]) for a in args]


def latest_samples(folder: Path, task: str) -> Path | None:
    found = sorted(folder.rglob(f"samples_{task}_*.jsonl"))
    return found[-1] if found else None


def compact(folder: Path) -> None:
    """Write ``items/<task>.jsonl`` from the run's scores file and lm-eval's logged samples."""
    scores_path = folder / "scores.jsonl"
    if not scores_path.is_file():
        return
    members, scores = load_scores(scores_path)
    for task in NAMES:
        path = latest_samples(folder, task)
        if path is None:
            continue
        with path.open(encoding="utf-8") as f:
            samples = sorted((json.loads(line) for line in f if line.strip()), key=lambda s: s["doc_id"])
        rows = []
        for sample in samples:
            reqs = requests_of(sample)
            missing = [r for r in reqs if r not in scores]
            if missing:
                raise SystemExit(f"{task}: document {sample['doc_id']} has requests that {scores_path} lacks")
            rows.append(
                {
                    "doc_id": sample["doc_id"],
                    "doc_hash": sample["doc_hash"],
                    "target": int(sample["target"]),
                    # lm-eval's acc_norm divides by the choice's length; the continuation is the
                    # choice after lm-eval's target delimiter (one space).
                    "choice_chars": [len(c[1:] if c.startswith(" ") else c) for _, c in reqs],
                    "member_logliks": [scores[r].tolist() for r in reqs],
                    "logged": {m: float(sample[m]) for m in ("acc", "acc_norm") if m in sample},
                }
            )
        out = folder / "items" / f"{task}.jsonl"
        out.parent.mkdir(exist_ok=True)
        with out.open("w", encoding="utf-8") as f:
            f.write(json.dumps({"members": members, "samples": str(path.relative_to(folder))}) + "\n")
            for row in rows:
                f.write(json.dumps(row) + "\n")


def load_items(path: Path) -> tuple[list[str], list[dict[str, Any]]]:
    with path.open(encoding="utf-8") as f:
        head = json.loads(f.readline())
        return head["members"], [json.loads(line) for line in f if line.strip()]


def table(folder: Path) -> dict[str, Any]:
    compact(folder)
    summary: dict[str, Any] = {"members": None, "tasks": {}}
    for task in NAMES:
        path = folder / "items" / f"{task}.jsonl"
        if not path.is_file():
            continue
        members, items = load_items(path)
        if summary["members"] is None:
            summary["members"] = members
        elif summary["members"] != members:
            raise SystemExit(f"{path}: members {members}, other tasks {summary['members']}")
        systems: list[tuple[str, ...]] = [(m,) for m in members]
        systems += [(members[0], m) for m in members[1:]]  # the primary with each other member
        if len(members) > 2:
            systems.append(tuple(members))
        correct: dict[tuple[str, ...], dict[str, list[bool]]] = {s: {"acc": [], "acc_norm": []} for s in systems}
        everyone = tuple(members)
        for item in items:
            lls = np.asarray(item["member_logliks"], dtype=np.float64)  # choices x members
            lengths = np.asarray(item["choice_chars"], dtype=np.float64)
            gold = item["target"]
            for system in systems:
                idx = [members.index(m) for m in system]
                w = np.full(len(idx), 1.0 / len(idx))
                mix = np.array([mixture(row[idx], w) for row in lls])
                correct[system]["acc"].append(int(np.argmax(mix)) == gold)
                correct[system]["acc_norm"].append(int(np.argmax(mix / lengths)) == gold)
        for metric in ("acc", "acc_norm"):  # this script's rules must reproduce lm-eval's own
            logged = [bool(item["logged"][metric]) for item in items if metric in item["logged"]]
            if logged and correct[everyone][metric] != logged:
                bad = sum(a != b for a, b in zip(correct[everyone][metric], logged))
                raise SystemExit(f"{task}: recomputed {metric} of the run's ensemble differs from lm-eval's on {bad} items")
        rows = {}
        for system in systems:
            row: dict[str, Any] = {}
            for metric, vals in correct[system].items():
                k, n = int(sum(vals)), len(vals)
                lo, hi = wilson_interval(k, n)
                row[metric] = {"acc": round(100 * k / n, 2), "n": n, "ci95": [round(100 * lo, 1), round(100 * hi, 1)]}
            rows[short(system)] = row
        for metric in ("acc", "acc_norm"):
            best = max(members, key=lambda m: sum(correct[(m,)][metric]))
            for system in systems[len(members) :]:
                diff, ci = paired_difference(correct[system][metric], correct[(best,)][metric])
                rows[short(system)][metric]["vs_best"] = {"best": SHORT.get(best, best), "diff": diff, "ci95": ci}
        summary["tasks"][task] = {"n": len(items), "items": str(path.relative_to(folder)), "systems": rows}
    if not summary["tasks"]:
        raise SystemExit(f"{folder}: no scores.jsonl with lm-eval samples, and no items/*.jsonl")
    return summary


def markdown(summary: dict[str, Any]) -> str:
    out: list[str] = []
    for metric in ("acc", "acc_norm"):
        tasks = [t for t in summary["tasks"] if metric in next(iter(summary["tasks"][t]["systems"].values()))]
        if metric == "acc_norm":
            tasks = [t for t in tasks if t != "unite_mmlu"]  # lm-eval's mmlu reports acc only
        head = "| system | " + " | ".join(f"{NAMES[t]} (N={summary['tasks'][t]['n']})" for t in tasks) + " |"
        out += [f"### `{metric}`", "", head, "|---|" + "---:|" * len(tasks)]
        systems = list(summary["tasks"][tasks[0]]["systems"]) if tasks else []
        for system in systems:
            cells = []
            for t in tasks:
                r = summary["tasks"][t]["systems"][system][metric]
                cell = f"{r['acc']:.1f}"
                if "vs_best" in r:
                    v = r["vs_best"]
                    cell += f" ({v['diff']:+.1f} [{v['ci95'][0]:+.1f}, {v['ci95'][1]:+.1f}])"
                cells.append(cell)
            out.append(f"| {system} | " + " | ".join(cells) + " |")
        out += [
            "",
            "Ensembles: accuracy, then (difference from the best member on the task, with its paired 95 % bootstrap interval).",
            "",
        ]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path)
    args = ap.parse_args()
    summary = table(args.folder)
    (args.folder / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (args.folder / "table.md").write_text(markdown(summary) + "\n")
    print(markdown(summary))


if __name__ == "__main__":
    main()
