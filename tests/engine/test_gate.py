"""Robust ensembling without models: the gate, the weighting rules, the choice mixture, and
the decode loop's lazy partners on fake members (the real-model checks: test_gate_real.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unite_llm import Ensemble
from unite_llm.config import EnsembleConfig
from unite_llm.errors import InvalidConfigError
from unite_llm.loglik import choice_mixture, mixture
from unite_llm.methods.gate import Gate, make_gate
from unite_llm.methods.weighting import EntropyWeights, PrimaryFloor, apply_rules, make_rules

from ..fakes import FakeMember

PROMPTS = ["The cat", "A dog sat on", "on the mat", "Hello"]


def test_gate_reads_the_full_softmax():
    logits = np.log(np.array([0.6, 0.3, 0.1]))
    assert Gate(0.5).confidence(logits, 3)[0] == pytest.approx(0.6)
    assert Gate(0.5, "margin").confidence(logits, 3)[0] == pytest.approx(0.3)
    assert not Gate(0.5).is_open(logits, 3)[0]
    assert Gate(0.5, "margin").is_open(logits, 3)[0]
    rows = np.log(np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3]]))
    assert Gate(0.55).is_open(rows, 3).tolist() == [False, True]
    padded = np.concatenate([logits, [50.0]])  # a padded vocabulary row: only the first `size` ids count
    assert Gate(0.5).confidence(padded, 3)[0] == pytest.approx(0.6)


@pytest.mark.parametrize(
    "bad",
    [
        -0.1,
        math.nan,
        math.inf,
        "0.5",
        True,
        {"threshold": 0.5, "signal": "entropy"},
        {"signal": "top1"},
        {"threshold": 1, "x": 2},
    ],
)
def test_bad_gate_settings_are_named(bad):
    with pytest.raises(InvalidConfigError, match="gate"):
        make_gate(bad)


@pytest.mark.parametrize("bad", ["floor=1.5", "floor=-0.1", "floor=abc", "floor", "bogus", "entropy=2", ["floor=nan"]])
def test_bad_weighting_rules_are_named(bad):
    with pytest.raises(InvalidConfigError, match=r"floor|rule"):
        make_rules(bad)


def test_bad_settings_fail_before_any_model_loads(tmp_path):
    missing = str(tmp_path / "no-such-model.gguf")
    for kwargs in (
        {"gate": -1},
        {"weighting": ["floor=2"]},
        {"weighting": ["nope"]},
        {"gate": {"threshold": 0.5, "signal": "?"}},
    ):
        with pytest.raises(InvalidConfigError, match=r"gate|floor|rule"):
            Ensemble.load([missing, missing], **kwargs)
    with pytest.raises(ValueError, match="floor"):  # pydantic's ValidationError; EnsembleConfig.read names the file
        EnsembleConfig(members=["a", "b"], weighting=["floor=3"])
    assert EnsembleConfig(members=["a", "b"], gate={"threshold": 0.4, "signal": "margin"}).gate == {
        "threshold": 0.4,
        "signal": "margin",
    }


def test_primary_floor_keeps_the_primary_and_shares_the_rest():
    w = np.array([0.2, 0.5, 0.3])
    out = PrimaryFloor(0.6)(w, np.zeros((3, 2)), 0)
    assert out.tolist() == pytest.approx([0.6, 0.25, 0.15])
    assert PrimaryFloor(0.1)(w, np.zeros((3, 2)), 0).tolist() == pytest.approx(w.tolist())


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    st.lists(st.floats(0.01, 10), min_size=2, max_size=4),
    st.floats(0, 1),
    st.integers(0, 3),
    st.data(),
)
def test_rules_give_a_distribution_and_the_floor_holds(weights, floor, primary, data):
    n = len(weights)
    primary %= n
    probs = np.array([data.draw(st.lists(st.floats(0, 1), min_size=3, max_size=3)) for _ in range(n)]) + 1e-6
    probs /= probs.sum(axis=1, keepdims=True)
    w = np.array(weights) / sum(weights)
    for rules in [(PrimaryFloor(floor),), (EntropyWeights(),), (EntropyWeights(), PrimaryFloor(floor))]:
        mixed = apply_rules(rules, w, probs, primary)
        assert mixed.sum() == pytest.approx(1.0) and np.all(mixed >= 0)
    final = PrimaryFloor(floor)(EntropyWeights()(w, probs, primary), probs, primary)
    assert final[primary] + 1e-12 >= floor  # the floor holds whatever ran before it
    assert final.sum() == pytest.approx(1.0)


def test_choice_mixture_one_member_is_the_member():
    ll = np.array([[-3.0, -1.5, -7.25]])
    assert choice_mixture(ll, [1.0]).tolist() == ll[0].tolist()


def test_choice_mixture_renormalises_each_member_over_the_choices():
    # Member 1 gives every text a far higher likelihood (a fluent base model) but prefers choice 0
    # only weakly; member 0 is sure of choice 1.  The raw mixture follows member 1, the renormalised
    # one weighs the two preferences.
    ll = np.array([[-20.0, -10.0], [-2.0, -2.1]])
    raw = [mixture(ll[:, c], [0.5, 0.5]) for c in range(2)]
    assert int(np.argmax(raw)) == 0
    assert int(np.argmax(choice_mixture(ll, [0.5, 0.5]))) == 1
    # A closed gate returns the primary's own log-likelihoods; a floor of 1 is the primary's ranking.
    assert choice_mixture(ll, [0.5, 0.5], primary=0, gate=Gate(0.5)).tolist() == ll[0].tolist()
    assert int(np.argmax(choice_mixture(ll, [0.5, 0.5], rules=make_rules(["floor=1"]), primary=1))) == 0


def pair(**options) -> list[FakeMember]:
    return [FakeMember("left", **options), FakeMember("right", **options)]


def texts(members, **kwargs) -> list[str]:
    ens = Ensemble(members, **kwargs)
    return [ens.generate(p, max_new_tokens=12).text for p in PROMPTS]


def test_gate_never_open_is_the_primary_alone_and_skips_the_partner():
    alone = texts([FakeMember("left")])
    members = pair()
    assert texts(members, gate=0.0) == alone
    assert members[1].calls == 0  # the partner never ran


def test_gate_always_open_is_plain_unite_with_that_primary():
    assert texts(pair(), gate=2.0) == texts(pair(), primary=0)
    assert texts(pair(), gate=2.0, primary="right") == texts(pair(), primary="right")


def test_a_gated_batch_gives_the_single_prompt_answers():
    ens = Ensemble([FakeMember("left", batch=True), FakeMember("right", batch=True)], gate=0.3)
    single = [ens.generate(p, max_new_tokens=12) for p in PROMPTS]
    batch = ens.generate(PROMPTS, max_new_tokens=12)
    assert [o.text for o in batch] == [o.text for o in single]
    assert [[s.ensembled for s in o.steps] for o in batch] == [[s.ensembled for s in o.steps] for o in single]
    opened = [s.ensembled for o in single for s in o.steps]
    assert any(opened) and not all(opened)  # this threshold opens on some steps only


def test_closed_steps_record_the_primary_alone():
    ens = Ensemble(pair(), gate=0.3)
    out = ens.generate("The cat", max_new_tokens=12)
    for step in out.steps:
        assert set(step.member_probs) == ({"left", "right"} if step.ensembled else {"left"})


def test_weighting_changes_only_the_mix():
    plain = Ensemble(pair(), primary=0).generate("The cat", max_new_tokens=1).steps[0]
    floored = Ensemble(pair(), weighting=["floor=1"]).generate("The cat", max_new_tokens=1).steps[0]
    assert [u.members for u in floored.union] == [u.members for u in plain.union]  # the members said the same
    assert [u.prob for u in floored.union] == pytest.approx([u.members["left"] for u in floored.union])  # floor 1: the primary's
