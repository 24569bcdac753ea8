"""Core benchmark (issue 2): the UniTE step's cost against the members' own decoding.

Measured in one run on the default pair (or the members given with -m), so that ratios compare like with like:

* raw llama-cpp-python decode time per token of each member alone (greedy, its own
  tokens, no ensembling): the floor the ensemble is compared with;
* the ensemble's decode step time, and the ratio ensemble step / sum of raw step times;
* ensemble step time around output position 20 versus position 400 (the tail window
  keeps re-tokenization O(1), so the step should not grow with length);
* the mean union size;
* with ``--baseline DIR`` (the ``src`` folder of another checkout, e.g. ``git worktree add
  /tmp/base <rev>`` then ``--baseline /tmp/base/src``): that revision's ensemble on the same
  members, interleaved with this one's, so a change to the decode loop is measured side by
  side on the same noisy machine.

Usage: python bench/bench_core.py [--out bench/results/core.json] [--tokens 420] [--repeats 3] [-m MEMBER -m ...]
                                  [--baseline OTHER/src]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import llama_cpp
import numpy as np

from unite_llm import Ensemble
from unite_llm.members.llama_cpp import LlamaCppMember
from unite_llm.models import DEFAULT_ENSEMBLE

PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle.\n\nOnce upon a time,"


def raw_decode_ms(member: LlamaCppMember, prompt: str, n: int) -> list[float]:
    """Per-token times of plain llama-cpp-python greedy decoding (eval + argmax)."""
    llm = member.llm
    llm.reset()
    member._context = []
    tokens = llm.tokenize(prompt.encode(), add_bos=True, special=True)
    llm.eval(tokens)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))
        tok = int(np.argmax(logits))
        llm.eval([tok])
        times.append((time.perf_counter() - t0) * 1000)
    llm.reset()
    member._context = []
    return times


def ensemble_step_ms(ens: Ensemble, prompt: str, n: int) -> tuple[list[float], list[int]]:
    """Per-step wall times of the ensemble (step, choice, append, members' evaluation)."""
    times, unions = [], []
    t_prev = time.perf_counter()
    for chunk in ens.stream(prompt, max_new_tokens=n, ignore_eos=True):
        now = time.perf_counter()
        if chunk.step is not None and chunk.output is None:
            times.append((now - t_prev) * 1000)
            unions.append(chunk.step.union_size)
        t_prev = now
    return times, unions


def load_baseline(src: Path) -> ModuleType:
    """The ``unite_llm`` package of another checkout, imported beside this one as ``unite_llm_baseline``."""
    spec = importlib.util.spec_from_file_location(
        "unite_llm_baseline", src / "unite_llm" / "__init__.py", submodule_search_locations=[str(src / "unite_llm")]
    )
    if spec is None or spec.loader is None:
        raise SystemExit(f"no unite_llm package under {src}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["unite_llm_baseline"] = module
    spec.loader.exec_module(module)
    return module


def revision(src: Path) -> str:
    out = subprocess.run(["git", "-C", str(src), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def window(times: list[float], centre: int, half: int = 10) -> float:
    return statistics.median(times[max(0, centre - half) : centre + half])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench/results/core.json")
    ap.add_argument("--tokens", type=int, default=420)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("-m", "--model", action="append", help="member (repeat); default: the default ensemble")
    ap.add_argument("--baseline", type=Path, help="src/ of another checkout: its ensemble is measured alongside")
    args = ap.parse_args()

    members = [LlamaCppMember(spec, n_ctx=2048, n_threads=args.threads) for spec in (args.model or DEFAULT_ENSEMBLE)]
    # Sequential stepping with the same threads as the raw runs: the ratio then isolates
    # what ensembling itself costs (bench_concurrency.py measures threads across members).
    ens = Ensemble(members, parallel=False)
    raw: dict[str, list[float]] = {m.name: [] for m in members}
    steps: list[list[float]] = []
    unions: list[int] = []
    base: Any = None
    if args.baseline:
        old = load_baseline(args.baseline)
        # The method from the baseline's own module: the registry's entry points name this checkout's.
        unite = importlib.import_module("unite_llm_baseline.methods.unite").UniTE(k=10)
        base = old.Ensemble(members, parallel=False, method=unite)
    base_steps: list[float] = []
    texts: dict[str, str] = {}
    for rep in range(args.repeats):  # interleaved, so that machine noise hits all alike
        for m in members:
            raw[m.name].extend(raw_decode_ms(m, PROMPT, args.tokens))
        t, u = ensemble_step_ms(ens, PROMPT, args.tokens)
        steps.append(t)
        unions.extend(u)
        line = f"repeat {rep + 1}/{args.repeats}: ensemble median {statistics.median(t):.2f} ms/step"
        if base is not None:
            bt, _ = ensemble_step_ms(base, PROMPT, args.tokens)
            base_steps.extend(bt)
            line += f", baseline {statistics.median(bt):.2f}"
        print(line, flush=True)
    if base is not None:  # the two revisions must also agree on what they generate
        for name, e in (("this", ens), ("baseline", base)):
            texts[name] = e.generate(PROMPT, max_new_tokens=48, ignore_eos=True).text

    raw_ms = {name: statistics.median(v) for name, v in raw.items()}
    step_all = [x for t in steps for x in t]
    step_ms = statistics.median(step_all)
    at20 = statistics.median([window(t, 20) for t in steps])
    at400 = statistics.median([window(t, min(400, len(t) - 10)) for t in steps])
    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "llama_cpp_python": llama_cpp.__version__},
        "members": [m.name for m in members],
        "tokens_per_run": args.tokens,
        "repeats": args.repeats,
        "raw_member_ms_per_token": raw_ms,
        "raw_member_tok_per_s": {k: 1000 / v for k, v in raw_ms.items()},
        "ensemble_ms_per_step": step_ms,
        "threads_per_member": members[0].llm.n_threads,
        "ratio_ensemble_over_sum_of_raw": step_ms / sum(raw_ms.values()),
        "step_ms_at_position_20": at20,
        "step_ms_at_position_400": at400,
        "ratio_400_over_20": at400 / at20,
        "mean_union_size": float(np.mean(unions)),
        "max_union_size": int(np.max(unions)),
        "targets": {"ratio_ensemble_over_sum_of_raw": "<= 1.10", "ratio_400_over_20": "<= 1.3", "mean_union_size": "< 2000"},
    }
    if base is not None:
        base_ms = statistics.median(base_steps)
        result["baseline"] = {
            "revision": revision(args.baseline),
            "this_revision": revision(Path(__file__).resolve().parent),
            "ensemble_ms_per_step": base_ms,
            "ratio_ensemble_over_sum_of_raw": base_ms / sum(raw_ms.values()),
            "ratio_this_over_baseline": step_ms / base_ms,
            "same_text_48_tokens": texts["this"] == texts["baseline"],
        }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    ens.close()


if __name__ == "__main__":
    main()
