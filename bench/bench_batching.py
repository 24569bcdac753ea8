"""Many sequences at once on llama.cpp members: server throughput, time to first token, eval speed.

One run, one thread per member, on the default pair (Qwen2.5-Coder-1.5B-Instruct + Gemma-3-270M) and,
for the server sweep, also on the previous default (SmolLM2-135M-Instruct + Gemma-3-270M):

1. **Server sweep** (``unite serve --max-batch 16``): 1, 4, 8 and 16 concurrent streaming clients,
   ``max_tokens`` 64 with ``ignore_eos``; aggregate completion tokens/s over the phase, p50/p95
   latency and time to first token, measured by the clients (one client: the median of 3 phases).
2. **32 clients arriving at once** (``max_tokens`` 32, default pair), against ``--max-batch`` 32,
   8 and 1 (one request at a time): p50/p95 time to first token side by side.
3. **Evaluation** (``unite eval``'s own ``run_task``, TriviaQA ``small``, seeded items):
   items/s at ``--batch-size 1`` and ``8``, accuracy of each, and how many answers are identical.
4. **Why answers can differ**: for 8 prompts and each member, the total variation between the
   next-token distribution of a batched row and of the single sequence, beside the total
   variation between two single-sequence evaluations of the same prompt (in 32-token chunks as
   the member does, and in one ``llama_decode``): the size of llama.cpp's own kernel rounding.

    .venv/bin/python bench/bench_batching.py --out bench/results/batching.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_server import free_port, load, pct, prompts

ROOT = Path(__file__).resolve().parents[1]
PAIR = ["qwen2.5-coder-1.5b-instruct", "gemma3-270m"]
OLD_PAIR = ["smollm2-135m-instruct", "gemma3-270m"]


def serve(max_batch: int, n_ctx: int, pair: list[str] = PAIR) -> tuple[subprocess.Popen, str, Any]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-c", "from unite_llm.cli import main; main()", "serve", "--port", str(port), "--threads", "1"]
    cmd += ["--n-ctx", str(n_ctx), "--max-queue", "128", "--max-batch", str(max_batch)]
    for m in pair:
        cmd += ["-m", m]
    log = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, text=True)
    deadline = time.monotonic() + 300
    while True:
        try:
            httpx.get(f"{url}/health", timeout=5).raise_for_status()
            return proc, url, log
        except httpx.HTTPError:
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise RuntimeError(f"server did not start: {log.read()[-2000:]}") from None
            time.sleep(0.5)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def phase(url: str, model: str, clients: int, max_tokens: int) -> dict[str, Any]:
    """``clients`` streaming requests at once (``ignore_eos``: every one makes ``max_tokens``)."""
    texts = prompts(clients)
    args = SimpleNamespace(clients=clients, requests=1, max_tokens=max_tokens, time_limit=1800.0, ignore_eos=True)
    results, wall, finished = asyncio.run(load(url, model, texts, args))
    ok = [r for r in results if r.ok]
    tokens = sum(r.completion_tokens for r in ok)
    latency = [r.latency_s for r in ok if r.latency_s is not None]
    ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
    return {
        "clients": clients,
        "max_tokens": max_tokens,
        "completed": len(ok),
        "errors": sum(r.error is not None for r in results),
        "finished_in_time": finished,
        "wall_s": round(wall, 2),
        "completion_tokens": tokens,
        "tokens_per_s": round(tokens / wall, 2),
        "latency_s": {"p50": pct(latency, 50), "p95": pct(latency, 95)},
        "ttft_s": {"p50": pct(ttft, 50), "p95": pct(ttft, 95)},
    }


def server_part(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"sweep": {}, "arrive_at_once": {}}
    for pair in (PAIR, OLD_PAIR):
        rows: list[dict[str, Any]] = []
        proc, url, _ = serve(16, args.n_ctx, pair)
        try:
            model = httpx.get(f"{url}/health").json()["model"]
            phase(url, model, 2, 4)  # warm-up: model pages, the batch context
            for clients in args.clients:
                # One client is the baseline of every ratio and its phase is short (noisy): median of 3.
                tries = [phase(url, model, clients, args.max_tokens) for _ in range(3 if clients == 1 else 1)]
                row = sorted(tries, key=lambda r: r["tokens_per_s"])[len(tries) // 2]
                row["tokens_per_s_tries"] = [r["tokens_per_s"] for r in tries]
                print("sweep", model, row, flush=True)
                rows.append(row)
        finally:
            stop(proc)
        one = next((r for r in rows if r["clients"] == 1), None)
        for r in rows:
            r["throughput_vs_1_client"] = round(r["tokens_per_s"] / one["tokens_per_s"], 2) if one else None
        out["sweep"][model] = rows
    for max_batch in (32, 8, 1):
        proc, url, _ = serve(max_batch, args.n_ctx)
        try:
            model = httpx.get(f"{url}/health").json()["model"]
            phase(url, model, 2, 4)
            row = phase(url, model, 32, args.burst_tokens)
            print(f"32 at once, --max-batch {max_batch}", row, flush=True)
            out["arrive_at_once"][f"max_batch_{max_batch}"] = row
        finally:
            stop(proc)
    serial = out["arrive_at_once"]["max_batch_1"]["ttft_s"]["p50"]
    for max_batch in (32, 8):
        row = out["arrive_at_once"][f"max_batch_{max_batch}"]
        row["ttft_p50_vs_max_batch_1"] = round(serial / row["ttft_s"]["p50"], 2)
    return out


def eval_part(args: argparse.Namespace) -> dict[str, Any]:
    from unite_llm.eval import Task
    from unite_llm.eval.runner import ensemble_system, run_task
    from unite_llm.members import load_member

    task = Task.load("triviaqa", setting="small")
    items = task.items(limit=args.eval_items, seed=0)
    members = [load_member(m, n_threads=1, n_seq=8) for m in PAIR]
    out: dict[str, Any] = {"task": "triviaqa", "setting": "small", "items": len(items)}
    try:
        system = ensemble_system(members, "unite", k=10)
        runs = {}
        for b in (1, 8):
            with tempfile.TemporaryDirectory() as tmp:
                run_task(task, system, items[:8], tmp, batch_size=b)  # warm-up: the shared few-shot prefix
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                runs[b] = run_task(task, system, items, tmp, batch_size=b)
                wall = time.perf_counter() - t0
            out[f"batch_{b}"] = {
                "wall_s": round(wall, 2),
                "items_per_s": round(len(items) / wall, 3),
                "accuracy": round(100 * sum(r["correct"] for r in runs[b]) / len(items), 1),
            }
            print(f"eval batch {b}", out[f"batch_{b}"], flush=True)
        same = sum(a["output"] == c["output"] for a, c in zip(runs[1], runs[8]))
        out["identical_answers"] = same
        out["identical_fraction"] = round(same / len(items), 3)
        out["same_verdict"] = sum(a["correct"] == c["correct"] for a, c in zip(runs[1], runs[8]))
        out["items_per_s_ratio_8_over_1"] = round(out["batch_8"]["items_per_s"] / out["batch_1"]["items_per_s"], 2)
        out["rounding"] = rounding(members, [it.prompt for it in items[:8]])
    finally:
        for m in members:
            m.close()
    return out


def tv(a: np.ndarray, b: np.ndarray) -> float:
    """Total variation between the next-token distributions of two logit vectors."""
    from unite_llm.mathops import softmax

    return 0.5 * float(np.abs(softmax(a) - softmax(b)).sum())


def rounding(members: list[Any], texts: list[str]) -> dict[str, Any]:
    import llama_cpp

    out: dict[str, Any] = {}
    for m in members:
        ctxs = [m.tokenize(t.encode(), add_bos=True) for t in texts]
        plan, whole = [], []
        for c in ctxs:
            m.reset()
            m.start_sequence()
            plan.append(np.array(m.next_logits(c)))
            m.llm.reset()
            m.llm.eval(c)  # the whole prompt in one llama_decode
            whole.append(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(m.llm.ctx, -1), shape=(len(m.vocab),)).copy())
        m.reset()
        batch = m.next_logits_batch(ctxs)
        b_tv = [tv(batch[i], plan[i]) for i in range(len(ctxs))]
        p_tv = [tv(whole[i], plan[i]) for i in range(len(ctxs))]
        out[m.name] = {
            "tv_batched_row_vs_single": {"mean": round(float(np.mean(b_tv)), 4), "max": round(max(b_tv), 4)},
            "tv_single_one_decode_vs_chunked": {"mean": round(float(np.mean(p_tv)), 4), "max": round(max(p_tv), 4)},
            "top1_same_batched_vs_single": int(sum(int(np.argmax(batch[i]) == np.argmax(plan[i])) for i in range(len(ctxs)))),
            "prompts": len(ctxs),
        }
        m.reset()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8, 16])
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--burst-tokens", type=int, default=32, help="max_tokens of the 32 clients arriving at once")
    ap.add_argument("--eval-items", type=int, default=64)
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--skip-server", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "batching.json")
    args = ap.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    report: dict[str, Any] = {
        "benchmark": "bench/bench_batching.py",
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "conditions": {
            "members": PAIR,
            "threads_per_member": 1,
            "cpu_count": os.cpu_count(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(),
            "transport": "HTTP/1.1 on 127.0.0.1, unite serve in a separate process",
        },
        "eval": eval_part(args),
    }
    if not args.skip_server:
        report["server"] = server_part(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
