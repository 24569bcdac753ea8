"""A byte-level view of a member's vocabulary.

UniTE unites candidates from members whose tokenizers disagree, so the only common
currency is bytes: token id -> the exact bytes it emits, and bytes -> every id that
emits them.  Working on token *strings* is the classic bug (``Ġ``/``▁`` markers,
``<0x0A>`` byte-fallback pieces, partial UTF-8 pieces); nothing here looks at strings.

``encode`` extends a member's tokenizer to arbitrary bytes.  llama.cpp (like most
tokenizers) replaces invalid UTF-8 with U+FFFD, which would silently change the text;
the shared output can hold a partial UTF-8 sequence (a byte-level BPE member may pick
half of a CJK character), so invalid stretches are spelled with single-byte tokens
(byte-level BPE has all 256, SentencePiece has ``<0xXX>`` byte-fallback pieces).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

Tokenize = Callable[[bytes], list[int]]


def utf8_segments(data: bytes) -> Iterator[tuple[bytes, bool]]:
    """Split ``data`` into maximal (segment, is_valid_utf8) runs, in order."""
    pos = 0
    while pos < len(data):
        try:
            data[pos:].decode("utf-8")
        except UnicodeDecodeError as err:
            if err.start > 0:
                yield data[pos : pos + err.start], True
            yield data[pos + err.start : pos + err.end], False
            pos += err.end
        else:
            yield data[pos:], True
            return


def incomplete_utf8_tail(data: bytes) -> int:
    """Number of trailing bytes that start a UTF-8 sequence not yet complete.

    Streaming must hold these back: they may become a character with the next step.
    """
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:  # continuation byte: keep looking for the lead
            continue
        need = 2 if byte & 0xE0 == 0xC0 else 3 if byte & 0xF0 == 0xE0 else 4 if byte & 0xF8 == 0xF0 else 1
        return back if need > back else 0
    return 0


@dataclass
class ByteVocab:
    """Token id <-> bytes for one member.

    ``pieces[i]`` is what token ``i`` adds to the text (empty for control tokens such
    as ``<|im_start|>``).  ``eog_ids`` are the end-of-generation tokens; they are not
    text but form the shared END candidate.
    """

    pieces: Sequence[bytes]
    eog_ids: frozenset[int]
    _by_bytes: dict[bytes, tuple[int, ...]] = field(init=False, repr=False)
    _byte_ids: list[int | None] = field(init=False, repr=False)
    _char_ok: dict[str, bool] = field(init=False, repr=False)
    _longest: int = field(init=False, repr=False)
    emittable: list[bool] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        groups: dict[bytes, list[int]] = {}
        for tid, piece in enumerate(self.pieces):
            if piece and tid not in self.eog_ids:
                groups.setdefault(piece, []).append(tid)
        self._by_bytes = {piece: tuple(ids) for piece, ids in groups.items()}
        self._byte_ids = [None] * 256
        for value in range(256):
            ids = self._by_bytes.get(bytes([value]))
            if ids:
                self._byte_ids[value] = ids[0]
        self.emittable = [bool(p) and i not in self.eog_ids for i, p in enumerate(self.pieces)]
        self._longest = max((len(p) for p in self._by_bytes), default=1)
        self._char_ok: dict[str, bool] = {}

    def __len__(self) -> int:
        return len(self.pieces)

    def ids_of(self, piece: bytes) -> tuple[int, ...]:
        """Every id whose bytes are exactly ``piece`` (several for duplicates), or ()."""
        return self._by_bytes.get(piece, ())

    def byte_id(self, value: int) -> int | None:
        """The single-byte token for ``value`` (byte-level or ``<0xXX>`` fallback).

        None where the vocabulary has none: SmolLM2's lacks e.g. 0xF1 and 0xC0, bytes
        that no assigned character uses.  Such bytes cannot reach that member (its own
        tokenizer drops them too); :class:`~unite_llm.sync.TokenTrack` copes.
        """
        return self._byte_ids[value]

    def decode(self, ids: Sequence[int]) -> bytes:
        return b"".join(self.pieces[i] for i in ids)

    def spell(self, data: bytes) -> list[int]:
        """Longest-match pieces for bytes the tokenizer cannot take (invalid UTF-8).

        A byte-level BPE member has pieces that are partial UTF-8 (``e4 bd`` of 你), and
        BPE on those bytes would merge them the same way; SentencePiece has only
        ``<0xXX>`` byte pieces there.  Either way the member sees what it would emit.
        """
        out, pos = [], 0
        while pos < len(data):
            for end in range(min(len(data), pos + self._longest), pos + 1, -1):
                ids = self._by_bytes.get(data[pos:end])
                if ids:
                    out.append(ids[0])
                    pos = end
                    break
            else:
                tid = self.byte_id(data[pos])
                if tid is not None:
                    out.append(tid)
                pos += 1
        return out

    def encode(self, data: bytes, tokenize: Tokenize) -> list[int]:
        """Tokenize bytes that may contain invalid UTF-8 (see the module docstring)."""
        out: list[int] = []
        for segment, valid in utf8_segments(data):
            out.extend(self._exact(segment, tokenize) if valid else self.spell(segment))
        return out

    def _exact(self, segment: bytes, tokenize: Tokenize) -> list[int]:
        """The tokenizer's ids, unless they do not spell ``segment`` byte for byte.

        A few characters do not survive a tokenizer: SentencePiece reads a literal ``▁``
        (U+2581) as its space marker.  Those characters are spelled with byte pieces and
        the text around them tokenized as usual, so the member sees the real bytes.
        """
        ids = tokenize(segment)
        if self.decode(ids) == segment:
            return ids
        out: list[int] = []
        run: list[str] = []
        for ch in segment.decode("utf-8"):
            ok = self._char_ok.get(ch)
            if ok is None:
                ok = self._char_ok[ch] = self.decode(tokenize(ch.encode())) == ch.encode()
            if ok:
                run.append(ch)
                continue
            if run:
                out.extend(tokenize("".join(run).encode()))
                run = []
            out.extend(self.spell(ch.encode()))
        if run:
            out.extend(tokenize("".join(run).encode()))
        return out

    def first_subtoken(self, candidate: bytes, tokenize: Tokenize) -> int | None:
        """The paper's rule for a candidate outside the vocabulary: its first sub-token.

        A tokenizer that inserts a dummy-prefix space (SentencePiece's ``add_dummy_prefix``)
        would make that first piece a stray ``▁``; such whitespace pieces that are not part
        of the candidate are skipped, so the piece taken always spells the candidate's
        start.  A bare-space piece is taken only when the candidate itself begins with a
        space that this tokenizer keeps apart (as byte-level BPE does before digits): that
        is the member's real first token for that text.
        """
        for tid in self.encode(candidate, tokenize):
            piece = self.pieces[tid]
            if piece and candidate.startswith(piece):
                return tid
            if piece.strip():  # a real piece that does not spell the start: no estimate
                return None
        return None
