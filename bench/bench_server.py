"""Load benchmark for ``unite serve``: N concurrent streaming clients on loopback.

Starts ``unite serve`` as a subprocess on 127.0.0.1 (a free port), then launches
``--clients`` asyncio clients at once; each sends ``--requests`` streaming completions
one after another (greedy, ``max_tokens`` fixed).  The whole load phase is bounded by
``--time-limit``.  Afterwards every distinct prompt is asked once more *without*
streaming, and every streamed text must equal that greedy text exactly: a response
that is cut short, reordered, mixed with another client's text or missing ``[DONE]``
counts as dropped or corrupted.

Reported: requests completed, errors, dropped, corrupted, latency and time to first
token (p50 / p95, seconds, measured by the client), completion tokens per second over
the load phase.  The server runs ``--max-batch 1`` by default (one request at a time), where a
streamed text must equal the reference exactly; with ``--max-batch N`` (continuous batching) a
text can also differ by kernel rounding in a near-tie, so this script's "corrupted" count then
mixes the two (``bench/bench_batching.py`` measures batching itself).

    .venv/bin/python bench/bench_server.py --clients 32 --requests 1 --max-tokens 16 --out bench/results/server.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("UNITE_DATASETS", ROOT.parent / "shared" / "datasets"))
TOPICS = ["rivers", "volcanoes", "bread", "chess", "owls", "glass", "tides", "maps", "bees", "clocks", "salt", "kites"]


def prompts(n: int) -> list[str]:
    """``n`` distinct short prompts: Natural Questions when the shared data is there."""
    nq = DATASETS / "nq_open" / "NQ-open.dev.jsonl"
    if nq.is_file():
        with nq.open(encoding="utf-8") as f:
            qs = [json.loads(line)["question"] for _, line in zip(range(n), f)]
        return [f"Question: {q}?\nAnswer:" for q in qs]
    return [f"Write one sentence about {TOPICS[i % len(TOPICS)]} (#{i})." for i in range(n)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Result:
    client: int
    prompt: int
    ok: bool = False
    error: str | None = None
    text: str = ""
    finish_reason: str | None = None
    done: bool = False
    chunks: int = 0
    completion_tokens: int = 0
    ttft_s: float | None = None
    latency_s: float | None = None
    ids: set[str] = field(default_factory=set)


async def one_request(
    http: httpx.AsyncClient, url: str, model: str, prompt: str, max_tokens: int, res: Result, *, ignore_eos: bool = False
) -> None:
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": ignore_eos,
    }
    t0 = time.perf_counter()
    try:
        async with http.stream("POST", f"{url}/v1/completions", json=body) as r:
            if r.status_code != 200:
                res.error = f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"
                return
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    res.done = True
                    continue
                msg = json.loads(data)
                if "error" in msg:
                    res.error = msg["error"]["message"]
                    return
                res.ids.add(msg["id"])
                if msg.get("usage"):
                    res.completion_tokens = msg["usage"]["completion_tokens"]
                for choice in msg["choices"]:
                    res.chunks += 1
                    # The first piece of output, or the end when the model stopped at once.
                    if (choice["text"] or choice["finish_reason"]) and res.ttft_s is None:
                        res.ttft_s = time.perf_counter() - t0
                    res.text += choice["text"]
                    res.finish_reason = choice["finish_reason"] or res.finish_reason
        res.latency_s = time.perf_counter() - t0
        res.ok = res.done and res.finish_reason is not None and len(res.ids) == 1
    except Exception as err:  # a benchmark records failures instead of stopping
        res.error = f"{type(err).__name__}: {err}"


async def load(url: str, model: str, texts: list[str], args: argparse.Namespace) -> tuple[list[Result], float, bool]:
    results: list[Result] = []
    limits = httpx.Limits(max_connections=args.clients + 4, max_keepalive_connections=args.clients + 4)

    async def client(c: int, http: httpx.AsyncClient) -> None:
        for r in range(args.requests):
            p = (c + r * args.clients) % len(texts)
            res = Result(client=c, prompt=p)
            results.append(res)
            await one_request(http, url, model, texts[p], args.max_tokens, res, ignore_eos=args.ignore_eos)

    async with httpx.AsyncClient(timeout=httpx.Timeout(args.time_limit), limits=limits) as http:
        t0 = time.perf_counter()
        tasks = [asyncio.create_task(client(c, http)) for c in range(args.clients)]
        _done, pending = await asyncio.wait(tasks, timeout=args.time_limit)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        wall = time.perf_counter() - t0
    return results, wall, not pending


def pct(xs: list[float], q: float) -> float | None:
    return round(float(np.percentile(xs, q)), 3) if xs else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests", type=int, default=1, help="requests per client, one after another")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--time-limit", type=float, default=1200.0, help="seconds for the whole load phase")
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads per member (default: all cores)")
    ap.add_argument("--ignore-eos", action="store_true", help="every request decodes exactly --max-tokens")
    ap.add_argument("--max-batch", type=int, default=1, help="the server's --max-batch (1: one request at a time)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "server.json")
    args = ap.parse_args()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-c", "from unite_llm.cli import main; main()", "serve", "--port", str(port)]
    cmd += ["--n-ctx", str(args.n_ctx), "--max-queue", str(max(64, args.clients * 2)), "--max-batch", str(args.max_batch)]
    cmd += ["--threads", str(args.threads)] if args.threads else []
    log = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: a chatty server can never block on it
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, text=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                health = httpx.get(f"{url}/health", timeout=5).json()
                break
            except httpx.HTTPError:
                if server.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise RuntimeError(f"server did not start: {log.read()[-2000:]}") from None
                time.sleep(0.5)
        model = health["model"]
        texts = prompts(args.clients)
        load_avg = os.getloadavg()
        print(
            f"{args.clients} clients x {args.requests} streaming requests, max_tokens={args.max_tokens}, server {model}",
            flush=True,
        )
        results, wall, finished = asyncio.run(load(url, model, texts, args))
        # Reference: the same prompt without streaming (greedy, so the text must be identical),
        # one request at a time: also the no-concurrency baseline for throughput.
        reference = {}
        ref_tokens, ref_latency = 0, []
        with httpx.Client(timeout=600) as http:
            t_ref = time.perf_counter()
            for p in sorted({r.prompt for r in results}):
                body = {"model": model, "prompt": texts[p], "max_tokens": args.max_tokens, "temperature": 0}
                t0 = time.perf_counter()
                out = http.post(f"{url}/v1/completions", json=body).json()
                ref_latency.append(time.perf_counter() - t0)
                reference[p] = out["choices"][0]["text"]
                ref_tokens += out["usage"]["completion_tokens"]
            ref_wall = time.perf_counter() - t_ref
            sched = http.get(f"{url}/health").json()["scheduler"]
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()

    ok = [r for r in results if r.ok]
    errors = [r for r in results if r.error]
    dropped = [r for r in results if not r.ok and not r.error]
    corrupted = [r for r in ok if r.text != reference[r.prompt]]
    tokens = sum(r.completion_tokens for r in ok)
    report = {
        "benchmark": "bench/bench_server.py",
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "conditions": {
            "clients": args.clients,
            "requests_per_client": args.requests,
            "max_tokens": args.max_tokens,
            "temperature": 0,
            "stream": True,
            "time_limit_s": args.time_limit,
            "members": [m["name"] for m in health["members"]],
            "n_ctx": args.n_ctx,
            "threads_per_member": args.threads or os.cpu_count(),
            "transport": "HTTP/1.1 on 127.0.0.1, server in a separate process",
            "cpu_count": os.cpu_count(),
            "load_average_at_start": [round(x, 2) for x in load_avg],
            "python": platform.python_version(),
            "max_batch": args.max_batch,
            "note": "one worker thread; --max-batch 1 serves one request at a time, more decode together",
        },
        "requests_sent": len(results),
        "completed": len(ok),
        "errors": len(errors),
        "dropped": len(dropped),
        "corrupted": len(corrupted),
        "all_finished_in_time": finished,
        "wall_s": round(wall, 2),
        "latency_s": {"p50": pct([r.latency_s for r in ok], 50), "p95": pct([r.latency_s for r in ok], 95)},
        "ttft_s": {"p50": pct([r.ttft_s for r in ok], 50), "p95": pct([r.ttft_s for r in ok], 95)},
        "completion_tokens": tokens,
        "tokens_per_s": round(tokens / wall, 2) if wall else None,
        "requests_per_s": round(len(ok) / wall, 3) if wall else None,
        "sequential_baseline": {
            "what": "the same prompts again, one non-streamed request at a time, right after the load phase",
            "requests": len(ref_latency),
            "wall_s": round(ref_wall, 2),
            "latency_s": {"p50": pct(ref_latency, 50), "p95": pct(ref_latency, 95)},
            "tokens_per_s": round(ref_tokens / ref_wall, 2) if ref_wall else None,
        },
        "load_vs_sequential_throughput": round((tokens / wall) / (ref_tokens / ref_wall), 3) if wall and ref_tokens else None,
        "server_counters": sched,
        "error_samples": [asdict(r) | {"ids": sorted(r.ids)} for r in (errors + dropped + corrupted)[:5]],
        "requests": [
            {
                "client": r.client,
                "prompt": r.prompt,
                "ok": r.ok,
                "tokens": r.completion_tokens,
                "ttft_s": None if r.ttft_s is None else round(r.ttft_s, 3),
                "latency_s": None if r.latency_s is None else round(r.latency_s, 3),
                "matches_reference": r.text == reference.get(r.prompt),
            }
            for r in sorted(results, key=lambda r: r.client)
        ],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in report.items() if k not in ("conditions", "error_samples", "requests")}, indent=2))
    print(f"wrote {args.out}")
    if errors or dropped or corrupted or not finished:
        sys.exit(1)


if __name__ == "__main__":
    main()
