"""Speed of the robust default against the primary alone and plain UniTE, side by side.

One process loads the default pair once (Qwen2.5-Coder-1.5B-Instruct + Gemma-3-270M, every
core each) and times, interleaved round by round so that the machine's noise falls on all
alike, greedy decoding of the same prompts with ``ignore_eos``:

* ``qwen alone``: the primary by itself (an ensemble of one, every core);
* ``plain, parallel split``: UniTE on every step, members in threads, cores split between them
  (the plan every ensemble had before the thread plan);
* ``plain, sequential``: UniTE on every step, one member after the other, every core each;
* ``plain, thread plan``: what :func:`unite_llm.thread_plan.plan_threads` chooses from the
  members' timed decodes (the default for an ungated ensemble);
* ``default (gated)``: the default settings (:data:`unite_llm.models.DEFAULT_SETTINGS`):
  Gemma consulted only where Qwen's top-1 is below the gate, catching up in one decode.

Reported: tokens/s (median over rounds), the ratio to Qwen alone, and the fraction of steps
ensembled.  Writes ``bench/results/robust.json``.

    .venv/bin/python bench/bench_robust.py [--tokens 64] [--rounds 3] [--out bench/results/robust.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

from unite_llm import Ensemble
from unite_llm.members import load_member
from unite_llm.models import DEFAULT_ENSEMBLE, DEFAULT_SETTINGS
from unite_llm.sampling import GenerationConfig
from unite_llm.thread_plan import plan_threads

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [
    "Write a long story about a lighthouse keeper who finds a message in a bottle.\n\nOnce upon a time,",
    "Question: Which river flows through Vienna, Budapest and Belgrade?\nAnswer:",
]


def run(ens: Ensemble, gen: GenerationConfig) -> tuple[float, int, float]:
    """Seconds, tokens and fraction of steps ensembled, over every prompt one after the other."""
    t0 = time.perf_counter()
    tokens = ensembled = 0
    for prompt in PROMPTS:
        out = ens.generate(prompt, gen)
        tokens += len(out.steps)
        ensembled += sum(s.ensembled for s in out.steps)
    return time.perf_counter() - t0, tokens, ensembled / max(tokens, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/robust.json")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    qwen, gemma = (load_member(spec, n_threads=cores) for spec in DEFAULT_ENSEMBLE)
    pair = [qwen, gemma]
    gen = GenerationConfig(max_new_tokens=args.tokens, ignore_eos=True)

    def threads(n: int) -> None:
        for m in pair:
            m.set_threads(n)

    share = max(1, cores // 2)
    planned: dict[str, Any] = {}

    def plan() -> None:
        planned["parallel"] = plan_threads(pair, cores)

    systems: dict[str, tuple[Any, Ensemble]] = {
        "qwen alone": (lambda: threads(cores), Ensemble([qwen])),
        "plain, parallel split": (lambda: threads(share), Ensemble(pair, parallel=True)),
        "plain, sequential": (lambda: threads(cores), Ensemble(pair, parallel=False)),
        "plain, thread plan": (plan, None),
        "default (gated)": (lambda: threads(cores), Ensemble(pair, parallel=False, **DEFAULT_SETTINGS)),
    }
    times: dict[str, list[float]] = {name: [] for name in systems}
    frac: dict[str, float] = {}
    for r in range(args.rounds + 1):  # round 0 warms the caches and is not counted
        for name, (setup, ens) in systems.items():
            setup()
            if ens is None:  # the plan's choice, made now (its timing is part of the load, not counted)
                ens = Ensemble(pair, parallel=planned["parallel"])
            secs, tokens, ensembled = run(ens, gen)
            if r:
                times[name].append(tokens / secs)
            frac[name] = ensembled
    base = statistics.median(times["qwen alone"])
    rows = {
        name: {
            "tokens_per_s": round(statistics.median(v), 2),
            "all_rounds": [round(x, 2) for x in v],
            "vs_qwen_alone": round(statistics.median(v) / base, 3),
            "steps_ensembled": round(frac[name], 3),
        }
        for name, v in times.items()
    }
    result = {
        "what": __doc__.split("\n\n")[0],
        "members": list(DEFAULT_ENSEMBLE),
        "settings": DEFAULT_SETTINGS,
        "thread_plan_chose": "parallel" if planned.get("parallel") else "sequential",
        "tokens_per_prompt": args.tokens,
        "prompts": len(PROMPTS),
        "rounds": args.rounds,
        "cores": cores,
        "machine": platform.processor() or platform.machine(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "systems": rows,
    }
    for m in pair:
        m.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    for name, row in rows.items():
        print(
            f"{name:24} {row['tokens_per_s']:6.2f} tok/s  {row['vs_qwen_alone']:.2f}x  "
            f"ensembled {100 * row['steps_ensembled']:.0f} %"
        )
    print(f"thread plan chose: {result['thread_plan_chose']}; wrote {args.out}")


if __name__ == "__main__":
    main()
