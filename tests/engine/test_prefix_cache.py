"""History-independent greedy answers with the prefix cache on (issue 15).

llama.cpp rounds differently with the batch a token is computed in, so a reused prefix
used to make an answer depend on the request served before it.  Each generation's prompt
is now evaluated by a plan that is a function of the prompt alone (aligned chunks, the
remainder, the last token alone) and only whole aligned chunks are reused: the logits,
and so the greedy texts, are bit-identical to a cold evaluation's whatever came before.
"""

from __future__ import annotations

import random

import numpy as np

from unite_llm.members.base import common_prefix
from unite_llm.members.llama_cpp import PREFILL_CHUNK


def cold(member, ctx: list[int]) -> np.ndarray:
    member.reset()
    member.start_sequence()
    return np.array(member.next_logits(ctx))


def test_logits_equal_a_cold_evaluation_whatever_the_history(real_member, nq_questions, qa_prompt):
    m = real_member
    qs = nq_questions[:6]
    texts = [qa_prompt(q) for q in qs[:3]] + [qa_prompt(q, shots=True) for q in qs[3:]]
    ctxs = [m.tokenize(t.encode(), add_bos=True) for t in texts]
    assert max(map(len, ctxs)) > 2 * PREFILL_CHUNK, "long enough to reuse aligned chunks"
    ref = [cold(m, c) for c in ctxs]
    rng = random.Random(15)
    for _ in range(10):
        for _ in range(rng.randint(1, 2)):  # a history: other prompts, each with a few decode steps
            c = rng.choice(ctxs)
            m.start_sequence()
            logits = m.next_logits(c)
            for _ in range(rng.randint(0, 4)):
                c = [*c, int(np.argmax(logits))]
                logits = m.next_logits(c)
        i = rng.randrange(len(ctxs))
        m.start_sequence()
        assert np.array_equal(m.next_logits(ctxs[i]), ref[i]), f"{m.name}: prompt {i} differs after another history"


def test_a_shared_prefix_is_still_reused(real_member, qa_prompt):
    m = real_member
    a = m.tokenize(qa_prompt("where is rome?", shots=True).encode(), add_bos=True)
    b = m.tokenize(qa_prompt("what is two plus two?", shots=True).encode(), add_bos=True)
    cold(m, a)
    before = m.n_evaluated
    m.start_sequence()
    m.next_logits(b)
    reused = common_prefix(a, b) // PREFILL_CHUNK * PREFILL_CHUNK
    assert reused >= PREFILL_CHUNK
    assert m.n_evaluated - before == len(b) - reused


def test_a_generation_after_scoring_reuses_the_scored_chunks(real_member, qa_prompt):
    """PackLLM scores the prompt, then generates from it: scored chunks lie on the prompt
    plan's boundaries, so the generation reuses them and its logits are still a cold run's."""
    m = real_member
    a = m.tokenize(qa_prompt("where is rome?", shots=True).encode(), add_bos=True)
    b = m.tokenize(qa_prompt("what is two plus two?", shots=True).encode(), add_bos=True)
    ref_a, ref_b = cold(m, a), cold(m, b)
    m.reset()
    m.score(a, 1)
    n = m.n_evaluated
    m.start_sequence()
    assert np.array_equal(m.next_logits(a), ref_a)
    assert m.n_evaluated - n == len(a) - (len(a) - 1) // PREFILL_CHUNK * PREFILL_CHUNK
    m.score(a, 1)
    m.start_sequence()
    assert np.array_equal(m.next_logits(b), ref_b)
