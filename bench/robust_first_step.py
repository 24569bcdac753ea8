"""The first step of every item, for choosing a robust rule before paying for full runs.

For each item of a task (the same seeded subset ``unite eval`` uses), every member scores
the prompt once and UniTE builds its union; the script stores, per item, the union's
candidates, each member's renormalised probability of each, and each member's own
full-vocabulary top-1 and top-2 probabilities (what a confidence gate reads).

``--simulate`` then replays candidate rules (gate threshold, primary weight, primary
floor) on those first steps against the committed per-item results of the primary alone
and of plain UniTE: an item whose rule picks the same first candidate as one of them is
given that system's verdict.  This is an estimate (later steps can still differ); it
ranks rules for the real runs in ``results/robust``, it does not replace them.

    .venv/bin/python bench/robust_first_step.py --task lambada --out results/robust/first_step
    .venv/bin/python bench/robust_first_step.py --simulate results/robust/first_step --runs results/members4
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from unite_llm.engine import Ensemble  # noqa: E402
from unite_llm.eval.tasks import Task  # noqa: E402
from unite_llm.members.base import start_sequence  # noqa: E402
from unite_llm.methods.base import MemberScores, candidate_text  # noqa: E402
from unite_llm.methods.unite import UniTE  # noqa: E402

PAIR = ["qwen2.5-coder-1.5b-instruct", "gemma3-270m"]


def top2(logits: np.ndarray) -> tuple[float, float]:
    x = np.asarray(logits, dtype=np.float64)
    m = x.max()
    z = np.exp(x - m).sum()
    a, b = np.partition(x, -2)[-2:][::-1] if x.size > 1 else (m, -np.inf)
    hi, lo = max(a, b), min(a, b)
    return float(np.exp(hi - m) / z), float(np.exp(lo - m) / z)


def probe(task_name: str, out: Path, limit: int, threads: int) -> None:
    task = Task.load(task_name, setting="small")
    items = task.items(limit=limit, seed=0)
    path = out / f"{task_name}.jsonl"
    done = {json.loads(line)["id"] for line in path.open()} if path.exists() else set()
    out.mkdir(parents=True, exist_ok=True)
    method = UniTE(k=10)
    with Ensemble.load(PAIR, parallel=False, n_threads=threads) as ens, path.open("a") as f:
        for n, item in enumerate(sorted(items, key=lambda it: it.prompt)):
            if item.id in done:
                continue
            tracks = ens.start_tracks(item.prompt, chat=False)
            views, stats = [], []
            for i, (m, t) in enumerate(zip(ens.members, tracks)):
                start_sequence(m)
                logits = np.array(m.next_logits(t.tokens), dtype=np.float32)
                stats.append(top2(logits))
                views.append(MemberScores(m.name, logits, m.vocab, ens.engine.subtoken_fns[i]))
            dist = method(views, np.array([0.5, 0.5]))
            rec: dict[str, Any] = {
                "id": item.id,
                "candidates": [candidate_text(c) for c in dist.candidates],
                "member_probs": np.round(dist.member_probs, 6).tolist(),
                "top": [[round(a, 6), round(b, 6)] for a, b in stats],
            }
            f.write(json.dumps(rec) + "\n")
            f.flush()
            if n % 25 == 0:
                print(f"{task_name}: {n + 1}/{len(items)}", flush=True)


def _first(rec: dict[str, Any], weights: np.ndarray) -> str:
    probs = weights @ np.asarray(rec["member_probs"])
    return str(rec["candidates"][int(np.argmax(probs))])


def simulate(folder: Path, runs: Path) -> None:
    """Estimated accuracy of candidate rules on each probed task (see the module docstring)."""
    for path in sorted(folder.glob("*.jsonl")):
        task = path.stem
        recs = {r["id"]: r for r in map(json.loads, path.open())}
        alone = {r["id"]: r for r in map(json.loads, (runs / task / f"{PAIR[0]}.jsonl").open())}
        plain_path = runs / task / f"unite_{PAIR[0]}+{PAIR[1]}_.jsonl"
        plain = {r["id"]: r for r in map(json.loads, plain_path.open())} if plain_path.exists() else {}
        ids = [i for i in recs if i in alone and i in plain]
        print(
            f"\n{task}: {len(ids)} items; primary alone {100 * np.mean([alone[i]['correct'] for i in ids]):.1f}, "
            f"plain UniTE {100 * np.mean([plain[i]['correct'] for i in ids]):.1f}"
        )
        for tau in (0.0, 0.3, 0.5, 0.7, 1.01):
            for w in (0.5, 0.6, 0.7, 0.75, 0.8):
                verdicts, unknown, opened = [], 0, 0
                for i in ids:
                    r = recs[i]
                    mp = np.asarray(r["member_probs"])
                    q_first = str(r["candidates"][int(np.argmax(mp[0]))])
                    u_first = _first(r, np.array([0.5, 0.5]))
                    if r["top"][0][0] >= tau:
                        pick = q_first
                    else:
                        opened += 1
                        pick = _first(r, np.array([w, 1 - w]))
                    if pick == u_first:
                        verdicts.append(plain[i]["correct"])
                    elif pick == q_first:
                        verdicts.append(alone[i]["correct"])
                    else:
                        unknown += 1
                        verdicts.append(False)
                diff = np.array(verdicts, dtype=float) - np.array([alone[i]["correct"] for i in ids], dtype=float)
                lo, hi = _paired_ci(diff)
                print(
                    f"  gate<{tau:<4} w_primary={w:<4}  open {100 * opened / len(ids):5.1f}%  "
                    f"delta {100 * diff.mean():+5.1f} [{100 * lo:+5.1f}, {100 * hi:+5.1f}]  unknown {unknown}"
                )


def _paired_ci(diff: np.ndarray, n_boot: int = 2000) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    means = diff[rng.integers(0, len(diff), (n_boot, len(diff)))].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", action="append", default=[])
    ap.add_argument("--out", type=Path, default=ROOT / "results/robust/first_step")
    ap.add_argument("--limit", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--simulate", type=Path)
    ap.add_argument("--runs", type=Path, default=ROOT / "results/members4")
    args = ap.parse_args()
    if args.simulate:
        simulate(args.simulate, args.runs)
        return
    for task in args.task:
        probe(task, args.out, args.limit, args.threads)


if __name__ == "__main__":
    main()
