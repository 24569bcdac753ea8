"""Efficiency of UniTE against the baselines, in one run, on the same members.

For each method (each single member too), a *fresh subprocess* loads the members,
generates ``--tokens`` tokens (``ignore_eos``, greedy) for each of ``--prompts`` raw
prompts, and reports:

* decode time per output token (ms; prefill excluded; rank: both members' whole
  generations plus the cross-scoring, per token of the answer returned),
* the ensembling step alone (ms per step inside the step method: what the method
  changes; the members' forward passes are the same for every method),
* tokens aligned per step (UniTE: the union; GaC: the whole union vocabulary; DeePEn:
  every token of every member, mapped into the relative space),
* peak resident memory of the process (``ru_maxrss``; a fresh process per method, so
  the peak is that method's own), and the resident memory after loading the members,
* one-time set-up cost (the method's ``prepare`` on its first generation: vocabulary
  maps for GaC, relative matrices for DeePEn; PackLLM's is per prompt).

``deepen`` (all anchors) is run too: it is expected to stop with its measured
out-of-memory error before allocating; ``deepen-fit`` is the largest variant that fits
``--deepen-gib``.  Results: ``--out`` (JSON) and the same path with ``.md`` (table and
the closing ratios).

    .venv/bin/python bench/bench_methods.py --out bench/results/methods.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

PROMPTS = [
    "The capital of France is",
    "Question: Tom has 3 apples and buys 5 more. How many apples does he have?\nAnswer:",
    "Here is a short story about a lighthouse keeper.\n\n",
    "def fibonacci(n):\n",
]
PAIR = ["smollm2-135m-instruct", "gemma3-270m"]
METHODS = ["smollm2-135m-instruct", "gemma3-270m", "unite", "gac", "packllm", "deepen", "deepen-fit", "rank"]


class TimedStep:
    """Wraps a step method to time the ensembling step alone (no model forward passes).

    Attribute look-ups fall through to the method, so the engine's optional hooks
    (``prepare``, ``generate``) are seen exactly as on the method itself.
    """

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.seconds = 0.0
        self.calls = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def __call__(self, *args: object, **kwargs: object) -> object:
        t0 = time.perf_counter()
        try:
            return self.inner(*args, **kwargs)  # type: ignore[operator]
        finally:
            self.seconds += time.perf_counter() - t0
            self.calls += 1


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child(method: str, tokens: int, n_prompts: int, n_ctx: int, threads: int) -> dict:
    """One method, measured inside this (fresh) process."""
    from unite_llm import Ensemble
    from unite_llm.errors import UniteError
    from unite_llm.methods.deepen import current_rss

    single = method in PAIR
    t0 = time.perf_counter()
    ens = Ensemble.load([method] if single else PAIR, method="unite" if single else method, n_ctx=n_ctx, n_threads=threads)
    load_s = time.perf_counter() - t0
    rss_loaded = current_rss() / 2**20
    timed = TimedStep(ens.method)
    ens.engine.method = timed  # type: ignore[assignment]
    row: dict = {"method": method, "members": ens.names, "load_s": load_s, "rss_after_load_mib": rss_loaded}
    runs = []
    try:
        for i, prompt in enumerate(PROMPTS[:n_prompts]):
            timed.seconds, timed.calls = 0.0, 0
            t0 = time.perf_counter()
            out = ens.generate(prompt, max_new_tokens=tokens, ignore_eos=True)
            wall = time.perf_counter() - t0
            t = out.timing
            runs.append(
                {
                    "prompt": i,
                    "steps": t.steps,
                    "decode_ms_per_token": 1000 * t.decode_s / max(t.steps, 1),
                    "prefill_s": t.prefill_s,
                    "prepare_s": t.prepare_s,
                    "wall_s": wall,
                    "aligned_mean": sum(s.aligned for s in out.steps) / max(len(out.steps), 1),
                    "step_ms": 1000 * timed.seconds / timed.calls if timed.calls else None,
                    "text": out.text,
                }
            )
    except UniteError as err:
        row["error"] = f"{type(err).__name__}: {err}"
    row["name"] = timed.inner.name  # type: ignore[attr-defined]
    ens.engine.method = timed.inner  # type: ignore[assignment]
    row["peak_rss_mib"] = peak_rss_mib()
    if runs:
        row["runs"] = runs
        row["setup_s"] = runs[0]["prepare_s"] if method not in ("packllm", "rank") else 0.0
        later = runs[1:] or runs
        row["decode_ms_per_token"] = sum(r["decode_ms_per_token"] for r in later) / len(later)
        row["aligned_per_step"] = sum(r["aligned_mean"] for r in runs) / len(runs)
        row["per_prompt_prepare_s"] = sum(r["prepare_s"] for r in later) / len(later)
        steps = [r["step_ms"] for r in later if r["step_ms"] is not None]
        row["step_ms"] = sum(steps) / len(steps) if steps else None
    space = getattr(ens.method, "space", None)
    if space is not None:
        row["deepen_anchors"] = len(space.anchors)
        row["deepen_full_anchors"] = ens.method.n_full_anchors
        row["deepen_matrices_mib"] = space.nbytes / 2**20
        row["deepen_setup_rss_delta_mib"] = ens.method.setup_rss_delta / 2**20
    ens.close()
    return row


def fmt(ms: float | None) -> str:
    return "-" if ms is None else f"{ms:.2f}"


def table(rows: list[dict], meta: dict) -> str:
    lines = [
        f"# Efficiency: UniTE and the baselines ({meta['when']})",
        "",
        f"Pair: {' + '.join(PAIR)} (llama.cpp, CPU, {meta['cpus']} cores, shared machine). "
        f"{meta['tokens']} tokens per prompt (greedy, ignore_eos), {meta['prompts']} raw prompts; decode ms/token "
        "averaged over prompts 2..n (prompt 1 pays set-up); each method in a fresh process. "
        f"DeePEn memory budget {meta['deepen_gib']} GiB; {meta['threads']} llama.cpp thread(s) per member. "
        f"Load average {meta['load_avg_start'][0]:.1f} at start, {meta['load_avg_end'][0]:.1f} at end. "
        "For single members and rank, 'aligned' is the member's own top-k (nothing crosses vocabularies).",
        "",
        "| method | runs as | decode ms/token | ensembling step ms | tokens aligned/step | peak RSS MiB |"
        " RSS after load MiB | one-time set-up s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r and "runs" not in r:
            lines.append(
                f"| {r['method']} | (failed) | - | - | - | {r['peak_rss_mib']:.0f} | {r['rss_after_load_mib']:.0f} | - |"
            )
            continue
        lines.append(
            f"| {r['method']} | {r['name']} | {r['decode_ms_per_token']:.1f} | {fmt(r.get('step_ms'))} | "
            f"{r['aligned_per_step']:,.0f} | "
            f"{r['peak_rss_mib']:.0f} | {r['rss_after_load_mib']:.0f} | {r['setup_s']:.2f} |"
        )
    errors = [r for r in rows if "error" in r]
    if errors:
        lines += ["", "Errors (expected for full DeePEn):", ""]
        lines += [f"* `{r['method']}`: {r['error']}" for r in errors]
    by = {r["method"]: r for r in rows if "runs" in r}
    lines += ["", "## Where UniTE is cheaper, and by how much", ""]
    u = by.get("unite")
    if u:
        for m in ("gac", "deepen-fit", "rank", "packllm"):
            b = by.get(m)
            if not b:
                continue
            step = ""
            if b.get("step_ms") and u.get("step_ms"):
                step = f"ensembling step {b['step_ms'] / u['step_ms']:,.1f}x ({b['step_ms']:.2f} vs {u['step_ms']:.2f} ms), "
            lines.append(
                f"* vs **{b['name']}**: {step}decode {b['decode_ms_per_token'] / u['decode_ms_per_token']:.2f}x "
                "the time per token "
                f"({b['decode_ms_per_token']:.1f} vs {u['decode_ms_per_token']:.1f} ms), "
                f"{b['aligned_per_step'] / max(u['aligned_per_step'], 1e-9):,.0f}x the tokens aligned per step, "
                f"peak RSS {b['peak_rss_mib'] / u['peak_rss_mib']:.2f}x "
                f"(+{b['peak_rss_mib'] - u['peak_rss_mib']:.0f} MiB), set-up {b['setup_s']:.2f} s vs {u['setup_s']:.2f} s"
            )
        d = by.get("deepen-fit")
        if d and "deepen_anchors" in d:
            lines.append(
                f"* DeePEn with all {d['deepen_full_anchors']:,} anchors would need "
                f"{d['deepen_matrices_mib'] / d['deepen_anchors'] * d['deepen_full_anchors'] / 1024:.1f} GiB of relative "
                f"matrices (measured {d['deepen_matrices_mib']:.0f} MiB for {d['deepen_anchors']:,} anchors, linear in anchors)."
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="bench/results/methods.json")
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--n-ctx", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=1, help="llama.cpp threads per member (1: stable on a busy machine)")
    ap.add_argument("--deepen-gib", type=float, default=8.0, help="DeePEn's memory budget (UNITE_DEEPEN_MEMORY_GIB)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.tokens, args.prompts, args.n_ctx, args.threads)))
        return
    # OMP_WAIT_POLICY=PASSIVE: llama.cpp's OpenMP workers otherwise spin while waiting,
    # which on a shared, oversubscribed machine distorts every timing here.
    env = {**os.environ, "UNITE_DEEPEN_MEMORY_GIB": str(args.deepen_gib), "OMP_WAIT_POLICY": "PASSIVE"}
    rows = []
    load_start = os.getloadavg()
    for method in args.methods.split(","):
        print(f"[bench] {method} ...", file=sys.stderr, flush=True)
        cmd = [sys.executable, __file__, "--child", method, "--tokens", str(args.tokens), "--prompts", str(args.prompts)]
        cmd += ["--n-ctx", str(args.n_ctx), "--threads", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            rows.append({"method": method, "error": proc.stderr[-2000:], "peak_rss_mib": 0, "rss_after_load_mib": 0})
            print(proc.stderr[-2000:], file=sys.stderr)
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(
            f"[bench] {method}: {row.get('decode_ms_per_token', '-')} ms/token, peak {row['peak_rss_mib']:.0f} MiB",
            file=sys.stderr,
            flush=True,
        )
    meta = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpus": os.cpu_count(),
        "tokens": args.tokens,
        "prompts": args.prompts,
        "deepen_gib": args.deepen_gib,
        "threads": args.threads,
        "load_avg_start": load_start,
        "load_avg_end": os.getloadavg(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2, ensure_ascii=False) + "\n")
    out.with_suffix(".md").write_text(table(rows, meta))
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
