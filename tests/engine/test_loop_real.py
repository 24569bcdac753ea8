"""The one decode loop on the real models: a batch equals its prompts alone for every
method, and several threads sharing one Ensemble get the sequential texts.

(The transformers backend, whose members score a batch in one pass, has the same test in
``test_transformers_member.py``; the loop's logic itself is tested fast on fake members in
``test_loop.py``.)
"""

from __future__ import annotations

import random
import threading

import pytest

from unite_llm import Ensemble
from unite_llm.methods import BUILTIN_METHODS, make_method
from unite_llm.methods.deepen import GIB, DeePEnFit, current_rss

PROMPTS = ["The capital of France is", "Once upon a time", "Question: what is 2 + 3?\nAnswer:"]


def build(name: str):
    if name == "deepen-fit":  # room for the embeddings read from the GGUF files and a few hundred anchors
        return DeePEnFit(memory_gib=current_rss() / GIB + 2.6)
    return make_method(name)


@pytest.mark.parametrize("method", sorted(BUILTIN_METHODS.keys() - {"deepen"}))  # deepen: 53.5 GiB, refused
def test_batch_equals_each_prompt_alone_llama_cpp(smol, gemma, method):
    ens = Ensemble([smol, gemma], method=build(method))
    alone = [ens.generate(p, max_new_tokens=5) for p in PROMPTS]
    together = ens.generate(PROMPTS, max_new_tokens=5)
    assert [(o.text, o.finish_reason) for o in together] == [(o.text, o.finish_reason) for o in alone]
    assert [[s.chosen for s in o.steps] for o in together] == [[s.chosen for s in o.steps] for o in alone]
    assert all(o.steps for o in alone)


def test_threads_sharing_an_ensemble_get_the_sequential_texts(smol, gemma):
    """Before the ensemble serialised its generations this aborted the process
    (GGML_ASSERT in ggml-cpu) or bled one prompt's text into another's."""
    ens = Ensemble([smol, gemma])
    prompts = PROMPTS[:2]
    want = {p: ens.generate(p, max_new_tokens=8).text for p in prompts}
    got: list[tuple[str, str]] = []
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        order = [p for p in prompts for _ in range(2)]
        random.Random(seed).shuffle(order)
        try:
            for p in order:
                got.append((p, ens.generate(p, max_new_tokens=8).text))
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors
    assert len(got) == 12
    assert all(text == want[p] for p, text in got)
