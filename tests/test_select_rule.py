"""Determine-Then-Ensemble's rule on synthetic score tables (no models needed)."""

from __future__ import annotations

import math

import pytest

from unite_llm.errors import InvalidConfigError
from unite_llm.select import CandidateScore, select_members, weight_grid


def c(name: str, score: float, length: float = 20.0) -> CandidateScore:
    return CandidateScore(name=name, score=score, length=length)


def verdicts(sel) -> dict[str, str]:
    return {d.name: d.verdict for d in sel.decisions}


def test_best_is_primary_and_close_compatible_members_join() -> None:
    sel = select_members([c("a", 50), c("b", 58), c("c", 49)])
    assert sel.primary.name == "b"
    assert verdicts(sel) == {"b": "primary", "a": "selected", "c": "selected"}
    assert [d.name for d in sel.decisions] == ["b", "a", "c"]  # considered in order of score
    assert sel.decisions[2].gap == pytest.approx(9.0)


def test_gap_rejection_is_strictly_more_than_the_gap() -> None:
    sel = select_members([c("a", 60), c("b", 50), c("c", 49.9)], gap=10)
    assert verdicts(sel) == {"a": "primary", "b": "selected", "c": "rejected"}  # exactly 10 points is allowed
    assert "10.1 points below" in sel.decisions[2].reason


def test_length_ratio_rejection_both_ways() -> None:
    sel = select_members([c("p", 60, 20), c("long", 59, 41), c("short", 58, 9.9), c("ok", 57, 40)], length_ratio=2.0)
    assert verdicts(sel) == {"p": "primary", "long": "rejected", "short": "rejected", "ok": "selected"}
    assert "2.05x longer" in sel.decisions[1].reason
    assert "shorter" in sel.decisions[2].reason
    assert sel.decisions[3].length_ratio == pytest.approx(2.0)


def test_gap_is_checked_before_length_and_reason_names_it() -> None:
    sel = select_members([c("p", 60, 20), c("bad", 30, 200)])
    assert sel.decisions[1].verdict == "rejected" and "points below" in sel.decisions[1].reason


def test_ties_keep_the_given_order() -> None:
    sel = select_members([c("first", 40), c("second", 40), c("third", 40)])
    assert [d.name for d in sel.decisions] == ["first", "second", "third"]
    assert sel.primary.name == "first"
    sel = select_members([c("second", 40), c("first", 40)])
    assert sel.primary.name == "second"


def test_all_rejected_leaves_the_primary_alone() -> None:
    sel = select_members([c("p", 70, 10), c("weak", 20, 10), c("verbose", 69, 100)])
    assert [d.name for d in sel.selected] == ["p"]
    assert [d.name for d in sel.rejected] == ["verbose", "weak"]  # in order of score


def test_more_than_three_candidates() -> None:
    table = [c("m1", 30, 10), c("m2", 45, 12), c("m3", 44, 30), c("m4", 40, 11), c("m5", 36, 12), c("m6", 12, 12)]
    sel = select_members(table, gap=10, length_ratio=2.0)
    assert [d.name for d in sel.decisions] == ["m2", "m3", "m4", "m5", "m1", "m6"]
    expected = {"m2": "primary", "m3": "rejected", "m4": "selected", "m5": "selected", "m1": "rejected", "m6": "rejected"}
    assert verdicts(sel) == expected


def test_zero_length_and_single_candidate() -> None:
    sel = select_members([c("p", 10, 5), c("mute", 9, 0)])
    assert math.isinf(sel.decisions[1].length_ratio) and sel.decisions[1].verdict == "rejected"
    assert [d.name for d in select_members([c("only", 0, 0)]).selected] == ["only"]


def test_bad_settings_are_user_errors() -> None:
    with pytest.raises(InvalidConfigError, match="at least one"):
        select_members([])
    with pytest.raises(InvalidConfigError, match="unique"):
        select_members([c("a", 1), c("a", 2)])
    with pytest.raises(InvalidConfigError, match="length ratio"):
        select_members([c("a", 1)], length_ratio=0.5)
    with pytest.raises(InvalidConfigError, match="gap"):
        select_members([c("a", 1)], gap=-1)


def test_table_rows_carry_every_column() -> None:
    row = select_members([c("a", 50), c("b", 20)]).table()[1]
    assert {"candidate", "score", "length", "gap", "length_ratio", "verdict", "reason", "vocab_size"} <= set(row)


def test_weight_grid() -> None:
    assert weight_grid(2) == [None, [0.6, 0.4], [0.7, pytest.approx(0.3)]]  # 0.5/0.5 is the equal setting
    assert weight_grid(3)[1] == [0.5, 0.25, 0.25]


def test_paired_difference() -> None:
    from unite_llm.select import paired_difference

    a = [True] * 30 + [False] * 10
    b = [True] * 20 + [False] * 20
    delta, (lo, hi) = paired_difference(a, b)
    assert delta == 25.0 and 10.0 < lo < delta < hi <= 40.0  # a is right wherever b is, and on 10 more items
    assert paired_difference(a, a) == (0.0, [0.0, 0.0])
