"""Prompts of the wrong shape through the Python API get an error that says what is wrong
(issue 28 item 13): not "needs chat mode" for ``generate([])`` or ``generate(42)``, and chat
content as OpenAI's list of text parts works as in the server."""

from __future__ import annotations

import pytest

from tests.fakes import FakeMember
from unite_llm.engine import Ensemble
from unite_llm.errors import InvalidInputError

TEMPLATE = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}assistant:"


@pytest.fixture()
def ens() -> Ensemble:
    members = [FakeMember("left"), FakeMember("right")]
    for m in members:
        m.chat_template = TEMPLATE
    return Ensemble(members)


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda e: e.generate([], max_new_tokens=1), "empty list"),
        (lambda e: e.generate(42, max_new_tokens=1), "got int"),
        (lambda e: e.generate(None, max_new_tokens=1), "got NoneType"),
        (lambda e: e.generate([[1, 2]], max_new_tokens=1), "got a list of int"),
        (lambda e: list(e.stream(["the", "cat"], max_new_tokens=1)), "stream takes one prompt"),
        (lambda e: e.generate([{"role": "user", "content": "hi"}], max_new_tokens=1), "needs chat mode"),
        (lambda e: e.generate([{"role": "user", "content": 3}], chat=True, max_new_tokens=1), "message 0: content must be"),
        (lambda e: e.generate("x\ud800", max_new_tokens=1), "prompt is not valid UTF-8"),
    ],
)
def test_a_prompt_of_the_wrong_shape_says_what_is_wrong(ens: Ensemble, call, needle: str) -> None:
    with pytest.raises(InvalidInputError, match=needle):
        call(ens)


def test_chat_content_as_text_parts_is_the_joined_text(ens: Ensemble) -> None:
    as_text = ens.generate([{"role": "user", "content": "the cat sat"}], chat=True, max_new_tokens=4)
    parts = [{"type": "text", "text": "the cat"}, {"type": "text", "text": " sat"}]
    as_parts = ens.generate([{"role": "user", "content": parts}], chat=True, max_new_tokens=4)
    assert as_parts.text == as_text.text and as_parts.prompt_tokens == as_text.prompt_tokens
