"""The robust ensemble's evidence: generation runs and log-likelihood tasks, paired with Qwen alone.

Generation (``results/robust/eval``): the default ensemble as ``unite eval`` runs it (the
gate included), on the same seeded items as Qwen alone (run beside it in the same folder, else
the committed run in ``results/members4``) and plain UniTE (``results/members4``).  Each row
is a paired difference in points against Qwen alone, with a 95 % paired bootstrap interval,
the fraction of steps on which Gemma was consulted, the mean time per item, and (where Qwen
alone was run beside it) the difference against the committed run of Qwen alone too.

Log-likelihood (``results/lm_eval/items``): every member's committed log-likelihood of every
choice, so each rule is recomputed exactly as ``unite-lm-eval`` applies it
(:func:`unite_llm.loglik.choice_mixture`; today's raw mixture for comparison), on the same
items, with lm-eval's ``acc`` and ``acc_norm``.

    .venv/bin/python bench/robust_tables.py            # writes results/robust/summary.json and table.md
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from unite_llm.eval.scoring import paired_difference
from unite_llm.loglik import choice_mixture, mixture
from unite_llm.methods.gate import make_gate
from unite_llm.methods.weighting import make_rules
from unite_llm.models import DEFAULT_ENSEMBLE, DEFAULT_SETTINGS

ROOT = Path(__file__).resolve().parents[1]
PRIMARY, PARTNER = DEFAULT_ENSEMBLE
PLAIN = f"unite_{PRIMARY}+{PARTNER}_"
LOGLIK_TASKS = {"unite_arc_easy": "ARC-E", "unite_arc_challenge": "ARC-C", "unite_piqa": "PIQA", "unite_mmlu": "MMLU"}
Rule = Callable[[np.ndarray], np.ndarray]


def _read(path: Path) -> dict[str, dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return {str(r["id"]): r for r in map(json.loads, f) if "correct" in r}


def _vs(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]], ids: list[str]) -> dict[str, Any]:
    """``a`` minus ``b`` in points on ``ids``, with its paired 95 % bootstrap interval."""
    diff, ci = paired_difference([a[i]["correct"] for i in ids], [b[i]["correct"] for i in ids])
    return {"diff": diff, "ci95": ci}


def generation_rows(runs: Path, baseline: Path) -> dict[str, Any]:
    """Each robust run in ``runs/<task>/`` against Qwen alone and plain UniTE on the same ids."""
    out: dict[str, Any] = {}
    for task_dir in sorted(p for p in runs.iterdir() if p.is_dir()):
        task = task_dir.name
        # Qwen alone run beside the ensemble (same build, same threads) when there is one, else
        # the committed baseline run: llama.cpp's sums depend on the thread split, so a few
        # greedy answers differ between two runs of one model.
        base_path, plain_path = baseline / task / f"{PRIMARY}.jsonl", baseline / task / f"{PLAIN}.jsonl"
        alone_path = task_dir / f"{PRIMARY}.jsonl"
        if not alone_path.is_file():
            alone_path = base_path
        if not alone_path.is_file():
            continue
        alone = _read(alone_path)
        plain = _read(plain_path) if plain_path.is_file() else {}
        base = _read(base_path) if base_path != alone_path and base_path.is_file() else {}
        for path in sorted(task_dir.glob("unite_*.jsonl")):
            runs_ = _read(path)
            ids = [i for i in runs_ if i in alone and (not plain or i in plain)]
            if not ids:
                continue
            row: dict[str, Any] = {
                "n": len(ids),
                "qwen_alone_from": str(alone_path.relative_to(ROOT)) if alone_path.is_relative_to(ROOT) else str(alone_path),
                "qwen_alone": round(100 * float(np.mean([alone[i]["correct"] for i in ids])), 2),
                "accuracy": round(100 * float(np.mean([runs_[i]["correct"] for i in ids])), 2),
                "ensembled": round(float(np.mean([runs_[i].get("ensembled", 1.0) for i in ids])), 3),
                "time_s": round(float(np.mean([runs_[i]["time_s"] for i in ids])), 3),
                "qwen_time_s": round(float(np.mean([alone[i]["time_s"] for i in ids])), 3),
                "vs_qwen": _vs(runs_, alone, ids),
            }
            if plain:
                row["plain_vs_qwen"] = _vs(plain, alone, ids)
                row["same_as_plain"] = round(float(np.mean([runs_[i]["output"] == plain[i]["output"] for i in ids])), 3)
            if base:
                both = [i for i in ids if i in base]
                row["vs_qwen_baseline"] = {"n": len(both), **_vs(runs_, base, both)}
            row["same_as_qwen"] = round(float(np.mean([runs_[i]["output"] == alone[i]["output"] for i in ids])), 3)
            out[f"{task}/{path.stem}"] = row
    return out


def loglik_rules() -> dict[str, Rule]:
    """The rules compared on the log-likelihood path, on ``lls[members=2, choices]``."""
    w = np.array([0.5, 0.5])
    default_gate = make_gate(DEFAULT_SETTINGS.get("gate"))
    default_rules = make_rules(DEFAULT_SETTINGS.get("weighting"))

    def raw(lls: np.ndarray) -> np.ndarray:  # before: the mixture of the members' likelihoods
        return np.array([mixture(lls[:, c], w) for c in range(lls.shape[1])])

    return {
        "raw mixture 0.5/0.5 (before)": raw,
        "choices renormalised 0.5/0.5": lambda lls: choice_mixture(lls, w, primary=0),
        "renormalised, floor=0.75": lambda lls: choice_mixture(lls, w, rules=make_rules("floor=0.75"), primary=0),
        "renormalised, gate 0.5": lambda lls: choice_mixture(lls, w, primary=0, gate=make_gate(0.5)),
        "default (DEFAULT_SETTINGS)": lambda lls: choice_mixture(lls, w, rules=default_rules, primary=0, gate=default_gate),
    }


def loglik_rows(items_dir: Path) -> dict[str, Any]:
    """Each rule's ``acc``/``acc_norm`` minus Qwen alone's on every committed lm-eval task."""
    out: dict[str, Any] = {}
    rules = loglik_rules()
    for task, short in LOGLIK_TASKS.items():
        path = items_dir / f"{task}.jsonl"
        if not path.is_file():
            continue
        with path.open(encoding="utf-8") as f:
            members = json.loads(f.readline())["members"]
            items = [json.loads(line) for line in f if line.strip()]
        idx = [members.index(PRIMARY), members.index(PARTNER)]
        rows: dict[str, Any] = {}
        for metric in ("acc", "acc_norm"):
            alone, by_rule = [], {name: [] for name in rules}
            for item in items:
                lls = np.asarray(item["member_logliks"], dtype=np.float64).T[idx]  # members x choices
                norm = np.asarray(item["choice_chars"], dtype=np.float64) if metric == "acc_norm" else 1.0
                alone.append(int(np.argmax(lls[0] / norm)) == item["target"])
                for name, rule in rules.items():
                    by_rule[name].append(int(np.argmax(rule(lls) / norm)) == item["target"])
            for name, vals in by_rule.items():
                diff, ci = paired_difference(vals, alone)
                rows.setdefault(name, {})[metric] = {
                    "accuracy": round(100 * float(np.mean(vals)), 2),
                    "qwen_alone": round(100 * float(np.mean(alone)), 2),
                    "vs_qwen": {"diff": diff, "ci95": ci},
                }
        out[short] = {"n": len(items), "rules": rows}
    return out


def _ci(d: dict[str, Any]) -> str:
    lo, hi = d["ci95"]
    mark = "**" if lo > 0 or hi < 0 else ""
    return f"{mark}{d['diff']:+.1f} [{lo:+.1f}, {hi:+.1f}]{mark}"


def markdown(summary: dict[str, Any]) -> str:
    lines = [
        "## Generation (default ensemble vs Qwen alone, same items)",
        "",
        "| task / run | N | Qwen alone | default | default − Qwen | plain UniTE − Qwen | steps ensembled "
        "| same output as Qwen | s/item (default / Qwen) | default − Qwen's committed run |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in summary["generation"].items():
        plain = _ci(r["plain_vs_qwen"]) if "plain_vs_qwen" in r else "–"
        base = _ci(r["vs_qwen_baseline"]) if "vs_qwen_baseline" in r else "–"
        lines.append(
            f"| {name} | {r['n']} | {r['qwen_alone']:.1f} | {r['accuracy']:.1f} | {_ci(r['vs_qwen'])} | {plain} "
            f"| {100 * r['ensembled']:.0f} % | {100 * r['same_as_qwen']:.0f} % "
            f"| {r['time_s']:.2f} / {r['qwen_time_s']:.2f} | {base} |"
        )
    lines += ["", "## Log-likelihood tasks (lm-eval items, Qwen + Gemma, points vs Qwen alone)", ""]
    lines += ["| rule | " + " | ".join(f"{t} acc | {t} acc_norm" for t in summary["loglik"]) + " |"]
    lines += ["|---|" + "---|---|" * len(summary["loglik"])]
    names = next(iter(summary["loglik"].values()))["rules"] if summary["loglik"] else {}
    for name in names:
        cells = [_ci(t["rules"][name][m]["vs_qwen"]) for t in summary["loglik"].values() for m in ("acc", "acc_norm")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Bold: the paired 95 % interval excludes 0."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=Path, default=ROOT / "results/robust/eval")
    ap.add_argument("--baseline", type=Path, default=ROOT / "results/members4")
    ap.add_argument("--items", type=Path, default=ROOT / "results/lm_eval/items")
    ap.add_argument("--out", type=Path, default=ROOT / "results/robust")
    args = ap.parse_args()
    summary = {
        "settings": DEFAULT_SETTINGS,
        "generation": generation_rows(args.runs, args.baseline) if args.runs.is_dir() else {},
        "loglik": loglik_rows(args.items),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    (args.out / "table.md").write_text(markdown(summary), encoding="utf-8")
    print(markdown(summary))


if __name__ == "__main__":
    main()
