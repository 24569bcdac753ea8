"""Concurrent stepping: ensemble step time / slowest member's step time, in one run.

Three ways to step the default pair (SmolLM2-135M + Gemma-3-270M, llama.cpp, CPU):

* ``sequential-all-cores``: one member after the other, each with every core;
* ``sequential-split``: one after the other, cores split between them;
* ``parallel-split``: both at once in the ensemble's threads, cores split (the default).

Per step we time the ensemble's forward (all members' logits) and each member's own
``next_logits``.  ``forward / slowest member`` is 1.0 for perfect overlap and
``sum / max`` (about 1.5-2) for sequential stepping.  Configurations are interleaved
round by round so that machine noise hits them alike.

    python bench/bench_concurrency.py --out bench/results/concurrency.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

from unite_llm.engine import Ensemble
from unite_llm.members.llama_cpp import LlamaCppMember

PROMPTS = ["The capital of France is", "Ensembles of language models help because", "def fibonacci(n):"]


class Timed:
    """A member whose ``next_logits`` calls are timed (everything else passes through)."""

    def __init__(self, member: LlamaCppMember) -> None:
        self.member = member
        self.times: list[float] = []

    def __getattr__(self, name: str):
        return getattr(self.member, name)

    def next_logits(self, context):
        t0 = time.perf_counter()
        out = self.member.next_logits(context)
        self.times.append(time.perf_counter() - t0)
        return out


def run(ens: Ensemble, prompt: str, n: int) -> dict[str, list[float]]:
    for m in ens.members:
        m.times.clear()
    forward: list[float] = []
    inner = ens.engine.forward

    def timed_forward(*args, **kwargs):
        t0 = time.perf_counter()
        out = inner(*args, **kwargs)
        forward.append(time.perf_counter() - t0)
        return out

    ens.engine.forward = timed_forward
    ens.generate(prompt, max_new_tokens=n, ignore_eos=True)
    ens.engine.forward = inner
    # Step 0 is the prompt (prefill); the rest are decode steps.
    return {"forward": forward[1:], **{m.name: m.times[1:] for m in ens.members}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("bench/results/concurrency.json"))
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    split = max(1, cores // 2)
    configs = {
        "sequential-all-cores": (False, cores),
        "sequential-split": (False, split),
        "parallel-split": (True, split),
    }
    ensembles = {}
    for name, (parallel, threads) in configs.items():
        specs = ("smollm2-135m-instruct", "gemma3-270m")
        members = [Timed(LlamaCppMember(spec, n_ctx=1024, n_threads=threads)) for spec in specs]
        ensembles[name] = Ensemble(members, parallel=parallel)
    samples: dict[str, dict[str, list[float]]] = {name: {} for name in configs}
    for r in range(args.rounds):
        for prompt in PROMPTS:
            for name, ens in ensembles.items():
                for key, values in run(ens, prompt, args.tokens).items():
                    samples[name].setdefault(key, []).extend(values)
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    results = {}
    for name, s in samples.items():
        members = [k for k in s if k != "forward"]
        ratios = [f / max(s[m][i] for m in members) for i, f in enumerate(s["forward"])]
        results[name] = {
            "parallel": configs[name][0],
            "n_threads_per_member": configs[name][1],
            "steps": len(s["forward"]),
            "forward_ms_median": 1000 * statistics.median(s["forward"]),
            **{f"{m}_ms_median": 1000 * statistics.median(s[m]) for m in members},
            "forward_over_slowest_median": statistics.median(ratios),
            "forward_over_slowest_mean": statistics.fmean(ratios),
        }
        print(name, json.dumps(results[name]))
    for ens in ensembles.values():
        ens.close()
    out = {
        "what": "ensemble forward time / slowest member's next_logits time, per decode step (default pair, greedy, ignore_eos)",
        "load_average_at_end": os.getloadavg(),
        "machine": {"cpus": cores, "python": platform.python_version(), "processor": platform.processor()},
        "tokens_per_prompt": args.tokens,
        "prompts": PROMPTS,
        "rounds": args.rounds,
        "results": results,
        "speedup_parallel_split_vs_sequential_split": results["sequential-split"]["forward_ms_median"]
        / results["parallel-split"]["forward_ms_median"],
        "speedup_parallel_split_vs_sequential_all_cores": results["sequential-all-cores"]["forward_ms_median"]
        / results["parallel-split"]["forward_ms_median"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
