"""What the prefix cache still saves now that reuse is history-independent (issue 15).

Three ways of running the same greedy requests through an ensemble (default: SmolLM2-135M +
Gemma-3-270M):

* ``aligned``: the prefix cache on, prompts evaluated by the aligned-chunk plan and only
  whole aligned chunks reused (the default since issue 15; history-independent);
* ``cold``:    ``prefix_cache=False``, every generation from an empty KV cache;
* ``before``:  the plan before issue 15 (reuse the whole common prefix, evaluate the rest in
  one batch), emulated by never telling the members that a generation starts.

Two workloads: an evaluation-like one (TriviaQA 5-shot: every prompt shares a long few-shot
block, run in prompt order as ``unite eval`` does) and a server-like one (short Natural
Questions prompts with little in common).  For each: wall time, prefill time, tokens the
members evaluated, and how many greedy texts differ from the cold ones.

    .venv/bin/python bench/bench_prefix_cache.py --n 24 --out bench/results/prefix_cache.json
    .venv/bin/python bench/bench_prefix_cache.py --n 24 --chunk 16 --out bench/results/prefix_cache_chunk16.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from unite_llm import Ensemble
from unite_llm.eval.tasks import Task
from unite_llm.members import llama_cpp as llama_cpp_member
from unite_llm.members.llama_cpp import PREFILL_CHUNK, LlamaCppMember

ROOT = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("UNITE_DATASETS", ROOT.parent / "shared" / "datasets"))


def workloads(n: int) -> dict[str, list[str]]:
    trivia = sorted(it.prompt for it in Task.load("triviaqa", datasets_dir=DATASETS).items(limit=n))
    with (DATASETS / "nq_open" / "NQ-open.dev.jsonl").open(encoding="utf-8") as f:
        nq = [f"Question: {json.loads(line)['question']}?\nAnswer:" for _, line in zip(range(n), f)]
    return {"triviaqa_5shot": trivia, "nq_0shot": nq}


def run(ens: Ensemble, prompts: list[str], max_new_tokens: int, mode: str) -> dict[str, Any]:
    members = [m for m in ens.members if isinstance(m, LlamaCppMember)]
    ens.prefix_cache = mode != "cold"
    for m in members:
        m.reset()
        m.start_sequence = (lambda m=m: setattr(m, "_fresh", False)) if mode == "before" else type(m).start_sequence.__get__(m)
    before = [m.n_evaluated for m in members]
    texts, prefill = [], 0.0
    t0 = time.perf_counter()
    for p in prompts:
        out = ens.generate(p, max_new_tokens=max_new_tokens)
        texts.append(out.text)
        prefill += out.timing.prefill_s
    wall = time.perf_counter() - t0
    for m in members:
        del m.start_sequence  # back to the class's method
    return {
        "wall_s": round(wall, 3),
        "prefill_s": round(prefill, 3),
        "evaluated_tokens": {m.name: m.n_evaluated - b for m, b in zip(members, before)},
        "texts": texts,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=24, help="prompts per workload")
    ap.add_argument("--max-new-tokens", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--chunk", type=int, default=None, help="override PREFILL_CHUNK (default: the library's)")
    ap.add_argument("-m", "--model", action="append", default=None, help="member (repeat); default: SmolLM2-135M + Gemma-3-270M")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    report: dict[str, Any] = {
        "members": None,
        "prefill_chunk": args.chunk or PREFILL_CHUNK,
        "n_prompts": args.n,
        "max_new_tokens": args.max_new_tokens,
        "threads_per_member": args.threads,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "workloads": {},
    }
    if args.chunk:
        llama_cpp_member.PREFILL_CHUNK = args.chunk  # read at each prefill
    specs = args.model or ["smollm2-135m-instruct", "gemma3-270m"]
    with Ensemble.load(specs, n_ctx=2048, n_threads=args.threads) as ens:
        report["members"] = ens.names
        for name, prompts in workloads(args.n).items():
            res = {mode: run(ens, prompts, args.max_new_tokens, mode) for mode in ("cold", "aligned", "before")}
            cold = res["cold"]
            entry: dict[str, Any] = {
                "prompt_tokens_mean": {
                    m.name: round(sum(len(m.tokenize(p.encode(), add_bos=True)) for p in prompts) / len(prompts), 1)
                    for m in ens.members
                }
            }
            for mode, r in res.items():
                entry[mode] = {
                    "wall_s": r["wall_s"],
                    "prefill_s": r["prefill_s"],
                    "evaluated_tokens": r["evaluated_tokens"],
                    "prefill_speedup_vs_cold": round(cold["prefill_s"] / r["prefill_s"], 2) if r["prefill_s"] else None,
                    "wall_speedup_vs_cold": round(cold["wall_s"] / r["wall_s"], 2) if r["wall_s"] else None,
                    "texts_differing_from_cold": sum(a != b for a, b in zip(r["texts"], cold["texts"])),
                }
            report["workloads"][name] = entry
            print(name, json.dumps(entry), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
