"""Robust ensembling on the real models: the gate's two limits, lazy partners catching up, the
thread plan.  (The rules' arithmetic and the loop's logic on fake members: test_gate.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from unite_llm import Ensemble
from unite_llm.mathops import softmax
from unite_llm.members.base import start_sequence
from unite_llm.thread_plan import plan_threads

from ..test_llama_batch import ROUNDING_TV, tv

PROMPTS = [
    "The capital of France is",
    "Question: Who wrote Hamlet?\nAnswer:",
    "def fibonacci(n):",
    "2 + 2 =",
    "Les fleurs du jardin sont",
    "Once upon a time, there was a",
    "Q: What is the boiling point of water in Celsius?\nA:",
    "日本の首都は",
]
PAIR = ["smollm2-135m-instruct", "gemma3-270m"]


def greedy(specs, **kwargs) -> list[bytes]:
    with Ensemble.load(specs, n_threads=1, **kwargs) as ens:
        return [ens.generate(p, max_new_tokens=16).output_bytes for p in PROMPTS]


@pytest.mark.slow  # loads a model itself
def test_gate_never_open_is_the_primary_alone_byte_for_byte():
    assert greedy(PAIR, gate=0.0) == greedy(PAIR[:1])
    assert greedy(PAIR[::-1], gate=0.0) == greedy(PAIR[1:])


@pytest.mark.slow  # loads a model itself
def test_gate_always_open_is_plain_unite():
    assert greedy(PAIR, gate=1.01) == greedy(PAIR, primary=0)


@pytest.mark.slow  # loads a model itself
def test_a_gated_ensemble_skips_the_partner_on_confident_steps():
    with Ensemble.load(PAIR, n_threads=1, gate=0.5) as ens:
        partner = ens.members[1]
        before = partner.n_evaluated
        outs = [ens.generate(p, max_new_tokens=16) for p in PROMPTS]
        steps = [s for o in outs for s in o.steps]
        opened = sum(s.ensembled for s in steps)
        assert 0 < opened < len(steps)
        # Catch-up evaluates each skipped token once, so the partner evaluated no more than
        # its prompts plus the output (what stepping every token costs), in fewer calls.
        evaluated = partner.n_evaluated - before
        prompts = sum(o.prompt_tokens[partner.name] for o in outs)
        assert evaluated <= prompts + sum(len(o.steps) for o in outs) + len(outs)
    for o in outs:
        for s in o.steps:
            assert set(s.member_probs) == (set(PAIR) if s.ensembled else {PAIR[0]})


@pytest.mark.parametrize("name", ["gemma", "smol"])
@pytest.mark.slow  # loads a model itself
def test_lazy_catch_up_gives_the_distribution_of_stepping_every_token(name, request):
    member = request.getfixturevalue(name)
    prompt = member.tokenize(b"The old lighthouse keeper climbed the stairs", add_bos=True)
    pending = member.tokenize(b" every night to light the lamp for the ships")

    start_sequence(member)
    member.next_logits(prompt)
    for j in range(1, len(pending) + 1):  # stepped token by token
        stepped = np.array(member.next_logits(prompt + pending[:j]), dtype=np.float64)

    start_sequence(member)
    member.next_logits(prompt)
    before = member.n_evaluated
    lazy = np.array(member.next_logits(prompt + pending), dtype=np.float64)  # one catch-up
    assert member.n_evaluated - before == len(pending)  # only the text it missed, once

    assert tv(softmax(lazy), softmax(stepped)) < ROUNDING_TV


def test_thread_plan_times_the_members_and_sets_their_threads(smol, gemma):
    for m in (smol, gemma):
        assert m.decode_ms(1, reps=2) > 0
    parallel = plan_threads([smol, gemma], cores=2)
    assert isinstance(parallel, bool)
    for m in (smol, gemma):  # back to one thread each, as the other tests expect
        m.set_threads(1)
    assert plan_threads([smol], cores=2) is False  # one member: nothing to overlap
