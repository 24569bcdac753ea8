"""Property tests on the real tokenizers: incremental re-tokenization of a tail window
always equals a fresh tokenization of prompt + output."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unite_llm.errors import InvalidInputError
from unite_llm.prompts import chat_template_source, start_track
from unite_llm.sync import TokenTrack

PIECES = st.sampled_from(
    [
        " the",
        "The",
        " cat",
        "é",
        " café",
        "naïve",
        "über",
        "你好",
        "世界",
        "。",
        "😀",
        "👍🏽",
        " ",
        "  ",
        "\n",
        "\n\n",
        "\t",
        "   x",
        "123",
        " 4567",
        ",",
        ".",
        "!?",
        "'s",
        "://",
        "—",
        "<|im_end|>",
        "<eos>",
        "▁",
        "Ġ",
        "ā",
        "ß",
    ]
)
# Assigned, printable characters plus newline and tab: SmolLM2's vocabulary cannot spell
# the bytes of unassigned planes (0xF1...) or some C0 controls at all.
CHARS = st.characters(exclude_categories=("Cs", "Co", "Cn", "Cc")) | st.sampled_from("\n\t")
# Chunks the ensemble might append: whole strings, or byte slices that split a character.
CHUNK = st.one_of(
    PIECES.map(str.encode),
    st.text(CHARS, min_size=1, max_size=6).map(str.encode),
    st.tuples(PIECES, st.integers(0, 8), st.integers(1, 8)).map(lambda t: t[0].encode()[t[1] : t[1] + t[2]] or b"x"),
)
PROMPTS = st.sampled_from(["The capital of France is", "Q: 2+2=?\nA:", "你好，", "Hello world ", ""])


def fresh(track: TokenTrack) -> list[int]:
    return track.frozen + track.vocab.encode(track.text, track._tokenize)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prompt=PROMPTS, chunks=st.lists(CHUNK, min_size=1, max_size=25))
def test_incremental_equals_fresh_tokenization(real_member, prompt, chunks):
    if not prompt and not real_member.tokenize(b"", add_bos=True):
        with pytest.raises(InvalidInputError, match="empty"):  # SmolLM2 has no BOS to start from
            start_track(real_member, prompt, chat=False)
        return
    track = start_track(real_member, prompt, chat=False)
    for chunk in chunks:
        tokens = track.append(chunk)
        assert tokens == fresh(track)
    assert track.vocab.decode(track.tail) == track.text
    text = track.text
    try:
        text.decode("utf-8")
    except UnicodeDecodeError:
        return
    # For valid UTF-8 this is the member's own tokenizer on prompt + output, wherever
    # that tokenizer keeps the bytes (it reads a literal "▁" as a space, see ByteVocab._exact).
    own = real_member.tokenize(text, add_bos=True, special=False)
    if real_member.vocab.decode(own) == text:
        assert track.tokens == own


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunks=st.lists(PIECES.map(str.encode), min_size=1, max_size=20))
def test_chat_prompt_track_equals_fresh(real_member, chunks, monkeypatch):
    if real_member.chat_template is None:  # the base Gemma: its family's template, forced
        monkeypatch.setattr(real_member, "chat_template", chat_template_source("gemma"))
    track = start_track(real_member, [{"role": "user", "content": "Say something."}], chat=True)
    frozen = list(track.frozen)
    for chunk in chunks:
        track.append(chunk)
        assert track.frozen == frozen
        assert track.tokens == fresh(track)


def test_window_bounds_the_work(smol):
    track = start_track(smol, "Once upon a time", chat=False)
    before = track.retokenized
    for word in [" there", " was", " a", " little", " cat"] * 60:
        track.append(word.encode())
    per_step = (track.retokenized - before) / 300
    assert per_step < 80  # bytes re-tokenized per append stay bounded (whole text is > 1000)
    assert len(track.text) > 1000


def test_bytes_a_member_cannot_spell_keep_the_track_consistent(smol):
    """U+40000 needs byte 0xF1, which SmolLM2 has no token for; its tokenizer drops it."""
    track = start_track(smol, "The capital of France is", chat=False)
    for chunk in [b" Paris", "\U00040000".encode(), b" and", b" more", b" text"]:
        assert track.append(chunk) == fresh(track)
    assert track.vocab.decode(track.tail) == track.text.replace(b"\xf1", b"")


@given(st.lists(st.integers(0, 3), max_size=200), st.lists(st.integers(0, 3), max_size=200))
def test_common_prefix_matches_a_plain_walk(a, b):
    from unite_llm.members.base import common_prefix

    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    assert common_prefix(a, b) == n
    assert common_prefix(a, a + b) == len(a)
    assert common_prefix(a * 40 + [9] + b, a * 40 + [8]) == 40 * len(a)
