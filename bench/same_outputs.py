"""Greedy outputs of this checkout and another source tree, side by side: a refactor of the
engine, the members or the step methods must leave them byte-identical.

Each revision runs in its own process (``PYTHONPATH`` set to its ``src``), loads each pair as
plain UniTE (``Ensemble.load([a, b])``, members one after the other, a fixed thread count, so
that llama.cpp's sums are the same in both) and decodes the same prompts greedily.  Writes
every text (as UTF-8 with replacement, and its bytes in hex) and whether the two agree.

    git archive REV src | tar -x -C /tmp/base        # the revision to compare with
    .venv/bin/python bench/same_outputs.py --baseline /tmp/base/src --label REV [--out bench/results/same_outputs.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PAIRS = [["qwen2.5-coder-1.5b-instruct", "gemma3-270m"], ["smollm2-135m-instruct", "gemma3-270m"]]
PROMPTS = [
    "The capital of France is",
    "Question: Who wrote Hamlet?\nAnswer:",
    "def fibonacci(n):\n",
    "Once upon a time, in a small village by the sea,",
    "Translate to German: The weather is nice today.\nGerman:",
    "Q: What is 17 + 25?\nA:",
    "Les fleurs du jardin sont",
    "日本の首都は",
]
CHILD = r"""
import json, sys
from unite_llm.engine import Ensemble
pairs, prompts, tokens, threads = json.loads(sys.stdin.read())
out = []
for pair in pairs:
    with Ensemble.load(pair, parallel=False, n_threads=threads) as ens:
        out.append([ens.generate(p, max_new_tokens=tokens).output_bytes.hex() for p in prompts])
print(json.dumps(out))
"""


def outputs(src: Path, tokens: int, threads: int) -> list[list[bytes]]:
    """Every pair's greedy text of every prompt, as the source tree at ``src`` decodes it."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD],
        input=json.dumps([PAIRS, PROMPTS, tokens, threads]),
        capture_output=True,
        text=True,
        env=env,
    )
    if proc.returncode:
        raise SystemExit(f"{src}: the decode failed\n{proc.stderr[-2000:]}")
    return [[bytes.fromhex(h) for h in row] for row in json.loads(proc.stdout.strip().splitlines()[-1])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", type=Path, required=True, help="the other revision's src/ folder")
    ap.add_argument("--label", help="what the baseline is (a revision), for the file; default: its path")
    ap.add_argument("--tokens", type=int, default=24)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/same_outputs.json")
    args = ap.parse_args()
    ours = outputs(ROOT / "src", args.tokens, args.threads)
    theirs = outputs(args.baseline.resolve(), args.tokens, args.threads)
    rows: list[dict[str, Any]] = []
    for pair, mine, base in zip(PAIRS, ours, theirs):
        for prompt, a, b in zip(PROMPTS, mine, base):
            rows.append(
                {
                    "pair": "+".join(pair),
                    "prompt": prompt,
                    "identical": a == b,
                    "text": a.decode("utf-8", errors="replace"),
                    "bytes": a.hex(),
                    **({} if a == b else {"baseline_text": b.decode("utf-8", errors="replace"), "baseline_bytes": b.hex()}),
                }
            )
    same = sum(r["identical"] for r in rows)
    result = {
        "what": __doc__.split("\n\n")[0],
        "baseline": args.label or str(args.baseline),
        "tokens": args.tokens,
        "threads": args.threads,
        "identical": f"{same}/{len(rows)}",
        "outputs": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"identical greedy outputs: {same}/{len(rows)}; wrote {args.out}")
    sys.exit(0 if same == len(rows) else 1)


if __name__ == "__main__":
    main()
