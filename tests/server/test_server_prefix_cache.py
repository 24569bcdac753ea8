"""History-independent greedy answers from the real server with the prefix cache on (issue 15);
the member-level checks (logits equal to a cold evaluation's) are in ``tests/engine/test_prefix_cache.py``."""

from __future__ import annotations

import random

import httpx


def test_shuffled_greedy_requests_give_one_text_per_prompt(server, nq_questions, qa_prompt):
    """20 greedy requests (10 prompts, each in two shuffled orders) on the real server with
    the prefix cache on: one text per prompt, the same as with every request started cold."""
    qs = nq_questions
    prompts = [qa_prompt(q) for q in qs[:5]] + [qa_prompt(q, shots=True) for q in qs[5:]]

    def complete(http: httpx.Client, p: str) -> str:
        body = {"model": server.model, "prompt": p, "max_tokens": 8, "temperature": 0}
        resp = http.post(f"{server.v1}/completions", json=body)
        assert resp.status_code == 200, resp.text
        return resp.json()["choices"][0]["text"]

    ens = server.ensemble
    with httpx.Client(timeout=120) as http:
        reference = {p: complete(http, p) for p in prompts}  # the fixture's server starts every request cold
        texts: dict[str, set[str]] = {p: set() for p in prompts}
        rng = random.Random(20)
        with ens.exclusive():  # between the worker's batches
            ens.prefix_cache = True
        try:
            for _ in range(2):
                order = list(prompts)
                rng.shuffle(order)
                for p in order:
                    texts[p].add(complete(http, p))
        finally:
            server.wait_idle()
            with ens.exclusive():
                ens.prefix_cache = False
    differs = {p: sorted(t) for p, t in texts.items() if t != {reference[p]}}
    assert not differs, differs
