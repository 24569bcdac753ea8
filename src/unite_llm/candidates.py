"""Candidates: what an ensemble step chooses between (byte strings, plus one shared END).

They sit next to the vocabulary (:mod:`unite_llm.vocab`) that spells them, below both the
members and the step methods, so members (a remote member names the candidates it bounds)
import nothing from :mod:`unite_llm.methods`.
"""

from __future__ import annotations

from typing import Final

from .vocab import ByteVocab


class _End:
    """The shared end-of-sequence candidate (every member's EOG tokens, merged)."""

    _instance: _End | None = None

    def __new__(cls) -> _End:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "END"

    def __reduce__(self) -> str:  # pickles (Ray, multiprocessing) as the same singleton
        return "END"


END: Final = _End()
Candidate = bytes | _End


def candidate_of(tid: int, vocab: ByteVocab) -> Candidate:
    """Token ``tid`` as a candidate: END for an end-of-generation id, else its bytes."""
    return END if tid in vocab.eog_ids else vocab.pieces[tid]


def candidate_text(candidate: Candidate) -> str:
    """A printable form of a candidate for logs and JSON (END as ``<END>``)."""
    if candidate is END:
        return "<END>"
    assert isinstance(candidate, bytes)
    return candidate.decode("utf-8", errors="backslashreplace")


__all__ = ["END", "Candidate", "candidate_of", "candidate_text"]
