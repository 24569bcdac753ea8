"""Does a greedy ensemble answer depend on what the members evaluated before?

llama.cpp keeps each member's KV cache between calls and evaluates only the suffix
that differs from the previous context.  A different previous request changes how the
prompt is split into evaluation batches, which changes the logits in the last float
bits; when two union candidates are nearly tied, greedy decoding can then pick a
different piece.  This script generates one prompt of the server benchmark after
different predecessors (and after a fresh load), to tell such differences apart from
server bugs when bench_server.py reports a streamed text that differs from its
non-streamed reference.

    .venv/bin/python bench/cache_history_check.py --prompt 18 --out bench/results/server_cache_history.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_server import prompts
from unite_llm import Ensemble


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompt", type=int, default=18, help="index into bench_server's prompts")
    ap.add_argument("--before", type=int, nargs="*", default=[17, 0, 5, 30], help="prompts generated just before")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    texts = prompts(32)
    target = texts[args.prompt]
    res: dict[str, str] = {}
    with Ensemble.load(n_ctx=2048) as ens:
        res["first request after load"] = ens.generate(target, max_new_tokens=args.max_tokens).text
        for pre in args.before:
            ens.generate(texts[pre], max_new_tokens=args.max_tokens)
            res[f"after prompt {pre}"] = ens.generate(target, max_new_tokens=args.max_tokens).text
    report = {"prompt_index": args.prompt, "prompt": target, "max_tokens": args.max_tokens, "greedy_text": res}
    print(json.dumps(report, indent=1, ensure_ascii=False))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
