"""Members beyond one process: step times and wire cost, in one run.

Four ways to run the default pair (SmolLM2-135M + Gemma-3-270M), greedy, same prompts:

* ``in-process-sequential``: both members in this process, one after the other;
* ``in-process-parallel``: both in this process, stepping in threads (the default);
* ``ray``: each member in its own Ray actor on a local cluster on 127.0.0.1;
* ``remote``: SmolLM2 behind llama-cpp-python's OpenAI-compatible server on 127.0.0.1
  (``openai:`` member, exact outsiders through logit_bias), Gemma in process.

Every member gets one thread (2 cores, 2 members).  Prompts are interleaved across the
configurations.  Besides step time it records what crosses the wire per step (payload
bytes each way, calls) and the bare round trip of one call, which is the network cost
a multi-machine deployment adds per call on top of its link latency.

    python bench/bench_distributed.py --out bench/results/distributed.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from unite_llm.engine import Ensemble
from unite_llm.members import load_member
from unite_llm.members.llama_cpp import LlamaCppMember
from unite_llm.models import resolve_gguf

PROMPTS = ["The capital of France is", "Ensembles of language models help because", "def fibonacci(n):"]
SMOL, GEMMA = "smollm2-135m-instruct", "gemma3-270m"


def start_server(log: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(resolve_gguf("smollm2-135m-instruct")), "--model_alias", SMOL]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", "1024", "--n_threads", "1", "--logits_all", "true"]
    cmd += ["--verbose", "false"]
    with open(log, "wb") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/v1"
    for _ in range(360):
        try:
            if httpx.get(f"{base}/models", timeout=2).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise TimeoutError("llama_cpp.server did not start")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=24)
    ap.add_argument("--out", type=Path, default=Path("bench/results/distributed.json"))
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="unite-bench-"))
    proc, base = start_server(tmp / "server.log")
    ensembles: dict[str, Ensemble] = {}
    try:
        local = [LlamaCppMember(SMOL, n_ctx=1024, n_threads=1), LlamaCppMember(GEMMA, n_ctx=1024, n_threads=1)]
        ensembles["in-process-sequential"] = Ensemble(local, parallel=False)
        ensembles["in-process-parallel"] = Ensemble(local, parallel=True)
        ensembles["ray"] = Ensemble.load([f"ray:{SMOL}?n_ctx=1024", f"ray:{GEMMA}?n_ctx=1024"])
        remote = load_member(f"openai:{base}#{SMOL}", tokenizer=SMOL, name=SMOL)
        ensembles["remote"] = Ensemble([remote, LlamaCppMember(GEMMA, n_ctx=1024, n_threads=1)], parallel=True)

        step_s: dict[str, list[float]] = {name: [] for name in ensembles}
        steps: dict[str, int] = dict.fromkeys(ensembles, 0)
        texts: dict[str, list[str]] = {name: [] for name in ensembles}
        approximated: dict[str, int] = dict.fromkeys(ensembles, 0)
        for prompt in PROMPTS:
            for name, ens in ensembles.items():
                out = ens.generate(prompt, max_new_tokens=args.tokens, ignore_eos=True)
                step_s[name].append(out.timing.decode_s / max(1, out.timing.steps))
                steps[name] += out.timing.steps
                texts[name].append(out.text)
                approximated[name] += sum(1 for s in out.steps if s.approximated)
            print(f"prompt {prompt!r} done", flush=True)

        results = {}
        for name in ensembles:
            results[name] = {
                "step_ms_per_prompt": [round(1000 * s, 2) for s in step_s[name]],
                "step_ms_mean": 1000 * statistics.fmean(step_s[name]),
                "steps": steps[name],
                "same_text_as_in_process": texts[name] == texts["in-process-sequential"],
                "approximated_steps": approximated[name],
            }
        # What crossed the wire (payloads; Ray's pickles, the server's HTTP bodies).
        for name in ("ray", "remote"):
            for m in ensembles[name].members:
                wire = getattr(m, "wire", None)
                if wire is None:
                    continue
                n = steps[name] + len(PROMPTS)  # + one prefill call per prompt
                results[name][f"wire_{m.name}"] = {
                    "calls_per_step": wire.calls / n,
                    "bytes_sent_per_step": wire.sent / n,
                    "bytes_received_per_step": wire.received / n,
                    "ms_in_calls_per_step": 1000 * wire.seconds / n,
                }
        ray_member = ensembles["ray"].members[0]
        t0 = time.perf_counter()
        for _ in range(100):
            ray_member._call("at", [1, 2, 3])
        results["ray"]["round_trip_ms"] = 10 * (time.perf_counter() - t0)
        with httpx.Client() as client:
            t0 = time.perf_counter()
            for _ in range(100):
                client.get(f"{base}/models")
            results["remote"]["round_trip_ms"] = 10 * (time.perf_counter() - t0)
        base_ms = results["in-process-parallel"]["step_ms_mean"]
        for name in results:
            results[name]["vs_in_process_parallel"] = results[name]["step_ms_mean"] / base_ms
            print(name, json.dumps(results[name]))
        out = {
            "what": "decode step time (ms) of the default pair run four ways; wire payload per step and bare round trip",
            "load_average_at_end": os.getloadavg(),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "conditions": "one thread per member, greedy, ignore_eos, 127.0.0.1; shared 2-core machine",
            "tokens_per_prompt": args.tokens,
            "prompts": PROMPTS,
            "results": results,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.out}")
    finally:
        for name, ens in ensembles.items():
            if name == "in-process-parallel":  # shares its members with the sequential one
                ens.engine._pool and ens.engine._pool.shutdown()
            else:
                ens.close()
        proc.terminate()
        proc.wait(timeout=30)
        import ray

        ray.shutdown()


if __name__ == "__main__":
    main()
