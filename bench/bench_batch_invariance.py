"""Why a batched llama.cpp row rounds differently from the single sequence: the two causes, measured.

For each model, row A (a prompt evaluated by the member's prompt plan, then 12 greedy decode steps)
is first run in a context of one sequence: the reference, what ``LlamaCppMember.next_logits`` does.
Then the same row runs in a context of several sequences beside other rows (other prompts, each
evaluated by its plan on its own; at each step every row's next token goes into one
``llama_decode``, as ``next_logits_batch`` does), with the KV cache laid out two ways:

* ``unified``: one pool of cells for all sequences (``kv_unified``, what ``LlamaCppMember`` uses:
  sequences share a few-shot prefix's cells and a joining prompt evaluates in the same decode as
  the other rows' steps);
* ``streams``: one stream of cells per sequence (``kv_unified`` off: a row's cells lie as a
  single sequence's do; llama.cpp then computes streams together only with equal token counts,
  and copies prefixes between streams only as whole buffers).

``apart`` has two sequences but decodes them in separate calls (one token per decode, as the
reference): it isolates the cache layout from the kernels.  Reported per configuration: the
largest |logit difference| of row A against the reference over its prompt and steps (0.0: bit
for bit) and the largest total variation between the two next-token distributions.  The kernels'
part depends on the CPU and the weight types (see the README's batching section); the machine is
recorded.

    .venv/bin/python bench/bench_batch_invariance.py --out bench/results/batch_invariance.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_batching import tv

ROOT = Path(__file__).resolve().parents[1]
MODELS = ["smollm2-135m-instruct", "gemma3-270m", "qwen2.5-coder-1.5b-instruct"]
ROW_A = (
    b"Question: Which planet is known as the red planet? The answer is Mars, because its surface is covered"
    b" in iron oxide. Question: Who wrote Hamlet?"
)
OTHERS = (
    b"Once upon a time in a small village by the sea, there lived an old fisherman who every morning went out"
    b" with his boat and his nets to catch fish for his family and the whole village, and then he sold the"
    b" rest at the market in town."
)
STEPS = 12


class Context:
    """A llama.cpp context over a member's model with ``n_seq`` sequences, and one batch to fill."""

    def __init__(self, member: Any, n_seq: int, unified: bool, n_ctx: int = 1024) -> None:
        import llama_cpp
        from llama_cpp import _internals

        params = llama_cpp.llama_context_params.from_buffer_copy(member.llm.context_params)
        params.n_seq_max, params.n_ctx, params.kv_unified = n_seq, n_ctx * n_seq, unified
        self.ctx = _internals.LlamaContext(model=member.llm._model, params=params, verbose=False)
        self.batch = _internals.LlamaBatch(n_tokens=512, embd=0, n_seq_max=1, verbose=False)
        self.n_vocab = len(member.vocab)

    def decode(self, items: list[tuple[int, int, int, bool]]) -> list[np.ndarray]:
        """One ``llama_decode`` of ``(sequence, position, token, wants logits)``; the logits asked for."""
        import llama_cpp

        from unite_llm.members.llama_cpp import fill_batch

        fill_batch(self.batch.batch, items)
        if llama_cpp.llama_decode(self.ctx.ctx, self.batch.batch) != 0:
            raise RuntimeError("llama_decode failed")
        wanted = [j for j, it in enumerate(items) if it[3]]
        logits = (llama_cpp.llama_get_logits_ith(self.ctx.ctx, j) for j in wanted)
        return [np.ctypeslib.as_array(p, shape=(self.n_vocab,)).copy() for p in logits]

    def prompt(self, seq: int, tokens: list[int]) -> np.ndarray:
        """Evaluate ``tokens`` on ``seq`` by the prompt plan, one decode per piece; the last logits."""
        from unite_llm.members.llama_cpp import prompt_plan

        start, out = 0, None
        for stop in prompt_plan(len(tokens)):
            out = self.decode([(seq, p, tokens[p], p == stop - 1) for p in range(start, stop)])[-1]
            start = stop
        assert out is not None
        return out

    def close(self) -> None:
        self.batch.close()
        self.ctx.close()


def measure(member: Any) -> dict[str, Any]:
    a = member.tokenize(ROW_A, add_bos=True)
    other = member.tokenize(OTHERS, add_bos=True)
    ref = Context(member, 1, True)
    outs = [ref.prompt(0, a)]
    track = list(a)
    for _ in range(STEPS):
        track.append(int(np.argmax(outs[-1])))
        outs.append(ref.decode([(0, len(track) - 1, track[-1], True)])[0])
    ref.close()

    def run(unified: bool, n_rows: int, together: bool) -> dict[str, float]:
        c = Context(member, max(n_rows, 2), unified)
        prompts = [a] + [other[: len(other) - 12 - k] for k in range(n_rows - 1)]  # rows of other lengths
        got = [c.prompt(0, a)]
        for s in range(1, n_rows):
            c.prompt(s, prompts[s])
        for i in range(STEPS):
            step = [(s, len(prompts[s]) + i, (track if s == 0 else other)[len(prompts[s]) + i], s == 0) for s in range(n_rows)]
            if together:
                got.append(c.decode(step)[0])
            else:  # one decode per row
                got.append(c.decode(step[:1])[0])
                for seq, pos, tok, _ in step[1:]:
                    c.decode([(seq, pos, tok, False)])
        c.close()
        return {
            "max_abs_logit_diff": round(max(float(np.abs(g - r).max()) for g, r in zip(got, outs)), 4),
            "max_tv": round(max(tv(g, r) for g, r in zip(got, outs)), 4),
        }

    result: dict[str, Any] = {}
    for layout, unified in (("unified", True), ("streams", False)):
        result[layout] = {"apart": run(unified, 2, together=False)}
        for n in (2, 3, 4, 8):
            result[layout][f"{n}_rows"] = run(unified, n, together=True)
        print(member.name, layout, result[layout], flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "batch_invariance.json")
    args = ap.parse_args()
    from unite_llm.members.llama_cpp import LlamaCppMember

    flags = Path("/proc/cpuinfo").read_text().split("flags")[1].split("\n")[0] if Path("/proc/cpuinfo").exists() else ""
    out: dict[str, Any] = {
        "machine": {"cpu": platform.processor() or platform.machine(), "avx2": " avx2" in flags, "avx512f": " avx512f" in flags},
        "what": "row A vs the single sequence over its prompt and 12 steps: max |logit diff| (0.0: bit for bit), max TV",
        "models": {},
    }
    for name in args.models:
        member = LlamaCppMember(name, n_threads=1)
        try:
            out["models"][name] = measure(member)
        finally:
            member.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
