"""Ensemble throughput versus batch size on the transformers path.

    python bench/bench_batch.py --out bench/results/batch_cpu.json

Loads SmolLM2-135M-Instruct + Gemma-3-270M through transformers (their GGUF files,
dequantised to float32 on CPU) and decodes greedy UniTE with ``ignore_eos`` so every
row runs the full ``--max-new-tokens``.  Batch 1 is the single-prompt path, prompts one
after another; batch B is ``Ensemble.generate_batch`` on B different prompts.  All
sizes run side by side in one process (the machine is shared and noisy), ``--repeats``
times each, and the best repeat is reported as well as the median.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from unite_llm import Ensemble
from unite_llm.members.transformers import TransformersMember

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time",
    "1, 2, 3, 4,",
    "Water boils at",
    "The opposite of hot is",
    "import numpy as",
    "Q: What is 2+2?\nA:",
    "The best way to learn a language is",
    "In 1969, the first humans",
    "My favourite recipe for bread",
    "The mitochondria is",
    "To install the package, run",
    "Dear Sir or Madam,",
    "The three primary colours are",
    "SELECT name FROM users WHERE",
]


def run(ens: Ensemble, batch: int, max_new_tokens: int) -> tuple[int, float]:
    """Generated tokens (ensemble steps) and wall seconds for ``batch`` prompts."""
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
    t0 = time.perf_counter()
    if batch == 1:
        outs = [ens.generate(prompts[0], max_new_tokens=max_new_tokens, ignore_eos=True)]
    else:
        outs = ens.generate_batch(prompts, max_new_tokens=max_new_tokens, ignore_eos=True)
    wall = time.perf_counter() - t0
    return sum(len(o.steps) for o in outs), wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", nargs="+", default=["smollm2-135m-instruct", "gemma3-270m"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 4, 16])
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: see TransformersMember n_threads)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=Path("bench/results/batch_cpu.json"))
    args = ap.parse_args()

    import torch

    t0 = time.perf_counter()
    members = [TransformersMember(spec, device=args.device, n_threads=args.threads) for spec in args.members]
    load_s = time.perf_counter() - t0
    print(f"loaded {len(members)} members in {load_s:.0f}s", file=sys.stderr)
    ens = Ensemble(members)
    run(ens, 2, 2)  # warm-up: first-call allocations and lazy imports
    results: dict[int, list[dict[str, float]]] = {b: [] for b in args.batches}
    for rep in range(args.repeats):
        for b in args.batches:  # interleaved, so load changes hit every size alike
            tokens, wall = run(ens, b, args.max_new_tokens)
            results[b].append({"tokens": tokens, "wall_s": round(wall, 3), "tokens_per_s": round(tokens / wall, 3)})
            print(
                f"repeat {rep + 1}/{args.repeats} batch {b:>2}: {tokens} tokens in {wall:.1f}s = {tokens / wall:.2f} tok/s",
                file=sys.stderr,
            )
    summary = {}
    for b, runs in results.items():
        rates = [r["tokens_per_s"] for r in runs]
        summary[str(b)] = {
            "median_tokens_per_s": round(statistics.median(rates), 3),
            "best_tokens_per_s": max(rates),
            "runs": runs,
        }
    base = summary[str(args.batches[0])]["median_tokens_per_s"]
    for b in args.batches:
        summary[str(b)]["speedup_vs_first"] = round(summary[str(b)]["median_tokens_per_s"] / base, 2)
    report = {
        "benchmark": "ensemble tokens/s vs batch size, transformers members, greedy UniTE k=10, ignore_eos",
        "device": args.device
        if args.device != "cpu"
        else f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, shared)",
        "members": args.members,
        "dtype": str(members[0].model.dtype),
        "torch_threads": torch.get_num_threads(),
        "max_new_tokens": args.max_new_tokens,
        "repeats": args.repeats,
        "load_s": round(load_s, 1),
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
        "by_batch": summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for b in args.batches:
        s = summary[str(b)]
        print(f"batch {b:>2}: {s['median_tokens_per_s']:.2f} tok/s (median of {args.repeats}), x{s['speedup_vs_first']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
