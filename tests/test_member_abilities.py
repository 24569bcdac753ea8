"""Declared member abilities (issue 27 item 3): checked at load, read instead of guessed."""

from __future__ import annotations

import pytest

from tests.fakes import FakeMember
from unite_llm.engine import Ensemble
from unite_llm.errors import ContextLengthError
from unite_llm.members import HOOKS, MemberBase, abilities, can, check_abilities, check_context
from unite_llm.members.base import reset_cache, start_sequence


class Declared(FakeMember, MemberBase):
    abilities = frozenset({"reset"})

    def __init__(self) -> None:
        super().__init__("left")
        self.resets = 0

    def reset(self) -> None:
        self.resets += 1

    def start_sequence(self) -> None:  # present but not declared: never called
        raise AssertionError("an undeclared hook was called")


def test_declared_hooks_are_called_and_undeclared_ones_are_not() -> None:
    m = Declared()
    reset_cache(m)
    start_sequence(m)
    assert m.resets == 1 and can(m, "reset") and not can(m, "start_sequence")


def test_a_declared_hook_the_member_lacks_is_refused_at_load() -> None:
    class Liar(FakeMember, MemberBase):
        abilities = frozenset({"score"})

    with pytest.raises(TypeError, match=r"declares \['score'\] but has no such method"):
        Ensemble([Liar("left")])

    class Unknown(FakeMember, MemberBase):
        abilities = frozenset({"fly"})

    with pytest.raises(TypeError, match="unknown abilities"):
        check_abilities(Unknown("left"))


def test_a_protocol_only_member_has_its_hooks_found_once() -> None:
    plain = FakeMember("left", batch=True)
    assert abilities(plain) == frozenset({"next_logits_batch", "token_embeddings"})
    assert set(abilities(plain)) <= set(HOOKS) and check_abilities(plain)


def test_one_context_check_for_every_member() -> None:
    m = FakeMember("left", n_ctx=4)
    check_context(m, 4)
    with pytest.raises(ContextLengthError, match="left: 5 tokens do not fit its context window of 4"):
        check_context(m, 5)
