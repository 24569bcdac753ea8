"""How often does a step's context end in whitespace, and would a lookahead tokenization change a member's top-1?

By default every member conditions on its own canonical tokenization of ``prompt + output``
(:class:`unite_llm.sync.TokenTrack`).  When that text ends in whitespace, the canonical
tokenization differs from how the same bytes tokenize once more text follows (byte-level BPE
merges a trailing space into the next word, ``" Paris"``; SentencePiece likewise ``▁Paris``;
GPT-2-style pre-tokenizers keep a trailing ``"\\n\\n"`` whole but split it before text).  A
*lookahead* tokenization (token healing, as in Microsoft Guidance) drops the trailing
whitespace run ``w`` from the member's context and reads the member's next-token distribution
over the tokens whose bytes start with ``w``; the bytes after ``w`` are its next piece.

This runs the real ensemble, greedy, on items of the built-in tasks and, for each member at
every step whose context ends in whitespace, compares

* canonical: the member's top-1 piece given its canonical tokens (what the ensemble uses);
* lookahead: the member's top-1 among tokens starting with ``w`` given the context without
  ``w``, minus the ``w`` it starts with.

Outcomes: ``same`` (equal bytes), ``ws_token`` (the lookahead top-1 is ``w`` itself: the model
would emit exactly that whitespace and go on from the canonical context, so no change),
``prefix`` (different segmentation of the same text direction: one is a prefix of the other),
``changed`` (the two predict different text), ``none`` (no token starts with ``w``).
``context_kept`` says whether the member's canonical context was the shape it sees mid-text:
``*_retokenized`` counts steps whose context was *not* a prefix of the next step's (the appended
piece re-merged its last tokens, e.g. a trailing ``"  "`` token split into ``" " + " He"``), by
whether the context ended in whitespace; ``ws_own_top1_keeps_context`` counts whitespace steps
where the tokenization of context + the member's own top-1 still starts with the context.

The hook wraps each member's ``next_logits``: every context the decode loop asks for is seen,
nothing in ``src/`` changes.  The lookahead context is evaluated *before* the canonical one, so
the member's KV cache ends holding the canonical context, as it would without the probe (the
logits returned to the ensemble are the canonical ones; greedy outputs are unchanged).

    nice -n 15 .venv/bin/python bench/whitespace_hazard.py --out bench/results/whitespace_hazard.json
    nice -n 15 .venv/bin/python bench/whitespace_hazard.py -m smollm2-135m-instruct -m gemma3-270m \\
        --out bench/results/whitespace_hazard.json      # adds this pair to the same file
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from unite_llm import Ensemble
from unite_llm.eval import Task
from unite_llm.models import DEFAULT_ENSEMBLE
from unite_llm.scores import top_k_ids

WHITESPACE = b" \t\n\r\x0b\x0c"
OUTCOMES = ("same", "ws_token", "prefix", "changed", "none")


def trailing_whitespace(text: bytes) -> bytes:
    return text[len(text.rstrip(WHITESPACE)) :]


def kind_of(w: bytes) -> str:
    return "newline" if b"\n" in w else "space"


def esc(b: bytes | None) -> str:
    if b is None:
        return "<END>"
    return repr(b)[2:-1]


def compare(canonical: bytes | None, rest: bytes | None) -> str:
    """How the lookahead's next piece relates to the canonical top-1 (``None`` = END / no token)."""
    if rest is None:
        return "none"
    if rest == b"":
        return "ws_token"
    if canonical is None:
        return "changed"
    if rest == canonical:
        return "same"
    if rest.startswith(canonical) or canonical.startswith(rest):
        return "prefix"
    return "changed"


class Probe:
    """Wraps one member's ``next_logits``; records canonical vs lookahead top-1 at whitespace-ending contexts."""

    def __init__(self, member: Any) -> None:
        self.member = member
        self.vocab = member.vocab
        self.inner = member.next_logits
        member.next_logits = self
        self._prefixed: dict[bytes, np.ndarray] = {}
        self.calls: list[dict[str, Any]] = []

    def _ids_starting_with(self, w: bytes) -> np.ndarray:
        if w not in self._prefixed:
            pieces, ok = self.vocab.pieces, self.vocab.emittable
            self._prefixed[w] = np.array([i for i, p in enumerate(pieces) if ok[i] and p.startswith(w)], dtype=np.int64)
        return self._prefixed[w]

    def _top1(self, logits: np.ndarray) -> bytes | None:
        (tid,) = top_k_ids(logits, self.vocab, 1)
        return None if tid in self.vocab.eog_ids else self.vocab.pieces[tid]

    def __call__(self, context: Any) -> np.ndarray:
        ctx = list(context)
        pieces = self.vocab.pieces
        frozen = 0
        while frozen < len(ctx) and not pieces[ctx[frozen]]:
            frozen += 1  # BOS (and any control tokens) stay as they are
        text = self.vocab.decode(ctx[frozen:])
        w = trailing_whitespace(text)
        rec: dict[str, Any] = {"ws": w.decode("latin-1"), "ctx": ctx}
        if w:
            healed = ctx[:frozen] + self.vocab.encode(text[: -len(w)], self.member.tokenize)
            ids = self._ids_starting_with(w)
            if healed and len(ids):
                hl = np.array(self.inner(healed), dtype=np.float64, copy=True)  # lookahead first: the KV cache ends canonical
                sub = hl[ids]
                best = int(ids[int(np.argmax(sub))])
                full = np.logaddexp.reduce(hl[: len(pieces)])
                rec["rest"] = pieces[best][len(w) :]
                rec["p_ws"] = float(np.exp(np.logaddexp.reduce(sub) - full))  # lookahead mass on "starts with w"
                rec["p_best"] = float(np.exp(hl[best] - full))
                rec["tokens_canonical_tail"] = [esc(pieces[t]) for t in ctx[-3:]]
            else:
                rec["rest"] = None
        logits = self.inner(ctx)
        rec["top1"] = self._top1(logits)
        if w:
            rec["outcome"] = compare(rec["top1"], rec["rest"])
            rec["tail"] = esc(text[-48:])
            if rec["top1"] is not None:  # is this context a prefix of the tokenization once the member's own top-1 follows?
                ext = ctx[:frozen] + self.vocab.encode(text + rec["top1"], self.member.tokenize)
                rec["own_next_keeps_context"] = ext[: len(ctx)] == ctx
        self.calls.append(rec)
        return logits


def run_task(ens: Ensemble, probes: list[Probe], task: Task, n: int, max_new: int | None, seed: int) -> dict[str, Any]:
    items = task.items(limit=n, seed=seed)
    steps = 0
    ws_kinds: Counter[str] = Counter()
    ws_runs: Counter[str] = Counter()
    per_member = {p.member.name: Counter() for p in probes}
    pws = {p.member.name: [] for p in probes}
    examples: dict[str, list[dict[str, Any]]] = {p.member.name: [] for p in probes}
    # A context is "kept" when the next step's context extends it (the appended bytes did not re-merge its
    # last tokens): the member saw the shape it will see mid-text.  Counted over steps that have a next step.
    kept = {p.member.name: Counter() for p in probes}
    correct = 0
    t0 = time.perf_counter()
    for k, item in enumerate(items):
        for p in probes:
            p.calls = []
        out = ens.generate(item.prompt, max_new_tokens=max_new or task.max_new_tokens, stop=task.stop)
        correct += bool(task.score(task.extract(out.text), item.gold))
        n_steps = len(out.steps)
        assert all(len(p.calls) == n_steps for p in probes), ([len(p.calls) for p in probes], n_steps)
        steps += n_steps
        for p in probes:
            for a, b in zip(p.calls, p.calls[1:]):
                ok = b["ctx"][: len(a["ctx"])] == a["ctx"]
                kind = "ws" if a["ws"] else "other"
                kept[p.member.name][f"{kind}_steps"] += 1
                kept[p.member.name][f"{kind}_retokenized"] += not ok
                if a.get("outcome") == "changed":
                    kept[p.member.name]["changed_and_retokenized" if not ok else "changed_and_kept"] += 1
            for a in p.calls:
                if "own_next_keeps_context" in a:
                    kept[p.member.name]["ws_own_top1_keeps_context"] += a["own_next_keeps_context"]
                    kept[p.member.name]["ws_own_top1_checked"] += 1
        for j in range(n_steps):
            w = probes[0].calls[j]["ws"]
            if not w:
                continue
            ws_kinds[kind_of(w.encode("latin-1"))] += 1
            ws_runs[repr(w)] += 1
            for p in probes:
                rec = p.calls[j]
                name = p.member.name
                per_member[name][rec["outcome"]] += 1
                if "p_ws" in rec:
                    pws[name].append(rec["p_ws"])
                if rec["outcome"] in ("changed", "prefix") and len(examples[name]) < 12:
                    examples[name].append(
                        {
                            "item": item.id,
                            "step": j,
                            "context_tail": rec["tail"],
                            "canonical_tail_tokens": rec.get("tokens_canonical_tail"),
                            "canonical_top1": esc(rec["top1"]),
                            "lookahead_top1_after_ws": esc(rec["rest"]),
                            "lookahead_p_top1": round(rec.get("p_best", 0.0), 4),
                            "outcome": rec["outcome"],
                            "ensemble_chose": out.steps[j].chosen,
                        }
                    )
        print(
            f"  {task.name} {k + 1}/{len(items)}: {n_steps} steps, ws {sum(ws_kinds.values())}/{steps} so far, changed "
            + ", ".join(f"{m} {c['changed']}" for m, c in per_member.items())
            + f", {time.perf_counter() - t0:.0f}s",
            flush=True,
        )
    n_ws = sum(ws_kinds.values())

    def pct(x: int, d: int) -> float:
        return round(100 * x / d, 2) if d else 0.0

    members = {}
    for name, c in per_member.items():
        members[name] = {
            "outcomes": {o: c[o] for o in OUTCOMES},
            "changed_pct_of_steps": pct(c["changed"], steps),
            "changed_pct_of_ws_steps": pct(c["changed"], n_ws),
            "changed_or_prefix_pct_of_steps": pct(c["changed"] + c["prefix"], steps),
            "mean_lookahead_p_ws": round(float(np.mean(pws[name])), 4) if pws[name] else None,
            "context_kept": dict(sorted(kept[name].items())),
            "examples": examples[name],
        }
    return {
        "task": task.name,
        "setting": task.setting,
        "items": len(items),
        "accuracy_pct": pct(correct, len(items)),
        "steps": steps,
        "ws_steps": n_ws,
        "ws_pct": pct(n_ws, steps),
        "ws_by_kind": {k: {"steps": ws_kinds[k], "pct_of_steps": pct(ws_kinds[k], steps)} for k in ("space", "newline")},
        "ws_runs": dict(ws_runs.most_common()),
        "members": members,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--member", action="append", help="member spec (repeatable; default: the default ensemble)")
    ap.add_argument("--out", default="bench/results/whitespace_hazard.json")
    ap.add_argument("--items", type=int, default=None, help="items per task (overrides --gsm8k-items and --triviaqa-items)")
    ap.add_argument("--gsm8k-items", type=int, default=20)
    ap.add_argument("--triviaqa-items", type=int, default=40)
    ap.add_argument("--gsm8k-max-new", type=int, default=160)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="llama.cpp threads per member")
    args = ap.parse_args()
    specs = args.member or list(DEFAULT_ENSEMBLE)
    plan = [("gsm8k", args.items or args.gsm8k_items, args.gsm8k_max_new), ("triviaqa", args.items or args.triviaqa_items, None)]
    out_path = Path(args.out)
    results = json.loads(out_path.read_text()) if out_path.is_file() else {}
    key = "+".join(specs)
    t0 = time.perf_counter()
    with Ensemble.load(specs, n_threads=args.threads) as ens:
        probes = [Probe(m) for m in ens.members]
        tasks = []
        for name, n, max_new in plan:
            if n:
                tasks.append(run_task(ens, probes, Task.load(name, setting="small"), n, max_new, args.seed))
    results[key] = {
        "members": specs,
        "seed": args.seed,
        "threads_per_member": args.threads,
        "seconds": round(time.perf_counter() - t0, 1),
        "tasks": {t["task"]: t for t in tasks},
    }
    results["_about"] = "\n\n".join(__doc__.split("\n\n")[2:5])
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    for t in tasks:
        line = ", ".join(
            f"{m}: changed {v['changed_pct_of_steps']}% of steps ({v['changed_pct_of_ws_steps']}% of ws steps)"
            for m, v in t["members"].items()
        )
        print(f"{key} {t['task']}: {t['items']} items, {t['steps']} steps, ws {t['ws_pct']}% {t['ws_by_kind']}; {line}")


if __name__ == "__main__":
    main()
