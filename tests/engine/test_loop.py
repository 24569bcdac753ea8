"""The decode loop's logic on small fake members (the fast tier: no model is loaded).

One loop serves a single prompt, a batch decoded row by row and a batch sharing each
member's forward pass; these tests pin down that all three give the same answers for
every method, and the loop's finish rules, streaming, prepare hooks and thread safety.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
import pytest

from unite_llm import Ensemble
from unite_llm.errors import InvalidConfigError
from unite_llm.methods import BUILTIN_METHODS, make_method
from unite_llm.methods.base import MemberScores, StepDistribution
from unite_llm.methods.unite import UniTE

from ..fakes import FakeMember

PROMPTS = ["The cat", "A dog sat on", "on the mat", "Hello"]
METHODS = ["unite", "gac", "packllm", "rank", "deepen-fit", "deepen"]


def pair(batch: bool, **options) -> list[FakeMember]:
    return [FakeMember("left", batch=batch, **options), FakeMember("right", batch=batch, **options)]


def signature(out) -> tuple:
    return (out.text, out.finish_reason, out.stop_reason, [s.chosen for s in out.steps], [round(s.prob, 9) for s in out.steps])


def test_every_builtin_method_is_tested_here():
    assert set(BUILTIN_METHODS) == set(METHODS)


@pytest.mark.parametrize("batch", [False, True], ids=["row-by-row", "batched"])
@pytest.mark.parametrize("method", METHODS)
def test_a_batch_equals_each_prompt_alone(method, batch):
    ens = Ensemble(pair(batch), method=make_method(method, k=5))
    alone = [ens.generate(p, max_new_tokens=12, stop=["\n\n"]) for p in PROMPTS]
    together = ens.generate(PROMPTS, max_new_tokens=12, stop=["\n\n"])
    assert [signature(o) for o in together] == [signature(o) for o in alone]
    assert {o.finish_reason for o in alone} <= {"stop", "length"}


def test_batched_members_share_one_call_per_step():
    members = pair(True)
    ens = Ensemble(members)
    outs = ens.generate(PROMPTS, max_new_tokens=6)
    steps = max(len(o.steps) for o in outs)
    assert all(m.calls == steps for m in members)  # prefill + (steps - 1) forwards, all rows at once


def test_packllm_weights_are_per_prompt_in_a_batch():
    method = make_method("packllm")
    ens = Ensemble(pair(True), method=method)
    outs = ens.generate(PROMPTS[:2], max_new_tokens=3)
    weights = []
    for p in PROMPTS[:2]:
        ens.generate(p, max_new_tokens=1)
        weights.append(method.last_weights.copy())
    assert not np.allclose(weights[0], weights[1])  # the prompts weigh the members differently
    for out, w in zip(outs, weights):
        first = out.steps[0]
        mixed = sum(w[i] * first.member_probs[n] for i, n in enumerate(ens.names))
        assert first.prob == pytest.approx(mixed, rel=1e-9)  # that prompt's weights, not 0.5/0.5


def test_finish_reasons_end_stop_length_and_full_context():
    ens = Ensemble(pair(False, end_after=8))
    ended = ens.generate("The cat", max_new_tokens=64)
    assert ended.finish_reason == "stop" and ended.stop_reason is None and ended.steps[-1].end
    assert not any(s.end for s in ended.steps[:-1])
    long = Ensemble(pair(False)).generate("The cat", max_new_tokens=3, ignore_eos=True)
    assert long.finish_reason == "length" and len(long.steps) == 3
    full = Ensemble(pair(False, n_ctx=12)).generate("The cat", max_new_tokens=64, ignore_eos=True)
    assert full.finish_reason == "length" and len(full.steps) < 64
    free = Ensemble(pair(False)).generate("The cat", max_new_tokens=40, ignore_eos=True)
    stop = free.text[5:7]
    hit = Ensemble(pair(False)).generate("The cat", max_new_tokens=40, ignore_eos=True, stop=[stop])
    assert hit.finish_reason == "stop" and hit.stop_reason == stop
    assert hit.text == free.text[: free.text.index(stop)]
    none = Ensemble(pair(False)).generate("The cat", max_new_tokens=0)
    assert none.text == "" and none.steps == [] and none.finish_reason == "length"


def test_stream_chunks_add_up_to_the_text():
    ens = Ensemble(pair(False))
    chunks = list(ens.stream("A dog", max_new_tokens=20, ignore_eos=True, stop=["mat"]))
    assert chunks[-1].output is not None and all(c.output is None for c in chunks[:-1])
    assert "".join(c.text for c in chunks) == chunks[-1].output.text
    assert chunks[-1].output.text == ens.generate("A dog", max_new_tokens=20, ignore_eos=True, stop=["mat"]).text


def test_primary_mode_spells_with_the_primary_tokens():
    ens = Ensemble(pair(False), primary="right")
    out = ens.generate("The cat", max_new_tokens=10, ignore_eos=True)
    right = ens.members[1].vocab
    assert all(right.ids_of(s.chosen.encode()) for s in out.steps)
    assert [signature(o) for o in ens.generate(PROMPTS[:2], max_new_tokens=6)] == [
        signature(ens.generate(p, max_new_tokens=6)) for p in PROMPTS[:2]
    ]


def test_threads_queue_and_give_the_sequential_texts():
    ens = Ensemble(pair(False, delay=0.001))
    want = {p: ens.generate(p, max_new_tokens=10).text for p in PROMPTS}
    got: list[tuple[str, str]] = []
    errors: list[BaseException] = []

    def worker(order: Sequence[str]) -> None:
        try:
            for p in order:
                got.append((p, ens.generate(p, max_new_tokens=10).text))
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(PROMPTS[i:] + PROMPTS[:i],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(got) == 16 and all(text == want[p] for p, text in got)


def test_a_second_generation_in_the_same_thread_is_refused_while_a_stream_is_open():
    ens = Ensemble(pair(False))
    stream = ens.stream("The cat", max_new_tokens=5, ignore_eos=True)
    next(stream)
    with pytest.raises(RuntimeError, match="already generating in this thread"):
        ens.generate("A dog", max_new_tokens=2)
    stream.close()  # closing the open stream frees the ensemble
    assert ens.generate("A dog", max_new_tokens=2).steps


class Counting(UniTE):
    """A user's method: UniTE that counts its prepare calls (declared, not probed)."""

    name = "counting"
    needs_prepare = True  # its own __call__ without a step_batch: not batched (declared by the base)

    def __init__(self, k: int = 10) -> None:
        super().__init__(k)
        self.prepared = 0
        self.stepped = 0

    def prepare(self, members, tracks, primary):
        self.prepared += 1
        return None

    def __call__(self, members: Sequence[MemberScores], weights: np.ndarray, *, ignore_eos: bool = False) -> StepDistribution:
        self.stepped += 1
        return super().__call__(members, weights, ignore_eos=ignore_eos)


def test_declarations_must_match_the_hooks():
    assert Counting.batched is False and UniTE.batched is True
    with pytest.raises(TypeError, match="needs_prepare"):
        type("NoDeclaration", (UniTE,), {"prepare": lambda self, m, t, p: None})
    with pytest.raises(TypeError, match="ResponseMethod"):
        type("Whole", (UniTE,), {"generate": lambda self, *a, **k: None})
    with pytest.raises(InvalidConfigError, match="not a StepMethod"):
        Ensemble(pair(False), method=lambda members, weights, ignore_eos=False: None)


def test_declared_capabilities_drive_the_loop():
    method = Counting(k=4)
    ens = Ensemble(pair(True), method=method)
    outs = ens.generate(PROMPTS, max_new_tokens=4, ignore_eos=True)
    assert method.prepared == len(PROMPTS)  # once per row
    assert method.stepped == sum(len(o.steps) for o in outs)  # not batched: called row by row


def test_a_method_from_another_package_through_the_entry_point_group(tmp_path, monkeypatch):
    """A package that declares ``[project.entry-points."unite_llm.methods"]`` adds a method."""
    dist = tmp_path / "unite_plugin_demo-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: unite-plugin-demo\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[unite_llm.methods]\ncounting = {__name__}:Counting\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from unite_llm.methods import registered_methods

    assert registered_methods()["counting"] == f"{__name__}:Counting"
    ens = Ensemble(pair(False), method="counting", k=3)
    assert isinstance(ens.method, Counting) and ens.method.k == 3
    assert ens.generate("The cat", max_new_tokens=3).steps and ens.method.prepared == 1
