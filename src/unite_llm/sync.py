"""Keeping one member's tokens in step with the shared byte output.

The ensemble appends *bytes* (the chosen candidate) to a shared output.  Each member
must then condition on its own canonical tokenization of ``prompt + output``: what the
member would have seen had the text been given as a prompt.  Re-tokenizing the whole
text per step costs O(length); instead only a tail window is re-tokenized.

Why a window suffices, and how it is checked: tokenizers merge locally, so the tokens
well before the end do not change when bytes are appended.  We re-tokenize from a token
boundary ``verify`` tokens before the window and accept only if the re-tokenization
reproduces those ``verify`` tokens exactly (so the window's left edge is a boundary the
tokenizer itself respects); otherwise the window doubles, up to the whole text, which is
the fresh tokenization by definition.  The property tests in ``tests/test_sync.py``
check the result against fresh tokenization on the real tokenizers.
"""

from __future__ import annotations

from .vocab import ByteVocab, Tokenize


class TokenTrack:
    """One member's token sequence for ``prompt + output``.

    ``frozen`` leading tokens (BOS and a chat-rendered prompt that contains control
    tokens) are never re-tokenized; everything after them is text that must stay equal
    to ``vocab.encode(text)``.
    """

    def __init__(
        self,
        vocab: ByteVocab,
        tokenize: Tokenize,
        frozen: list[int],
        text: bytes = b"",
        *,
        window: int = 4,
        verify: int = 4,
    ) -> None:
        self.vocab = vocab
        self._tokenize = tokenize
        self.frozen = list(frozen)
        self.text = text
        self.window = window
        self.verify = verify
        self.retokenized = 0  # bytes re-tokenized so far (the cost the window bounds)
        self.tail = vocab.encode(text, tokenize)
        self._ends = self._offsets(self.tail, 0)

    @property
    def tokens(self) -> list[int]:
        return self.frozen + self.tail

    def __len__(self) -> int:
        return len(self.frozen) + len(self.tail)

    def _offsets(self, ids: list[int], start: int) -> list[int]:
        ends, pos = [], start
        for tid in ids:
            pos += len(self.vocab.pieces[tid])
            ends.append(pos)
        return ends

    def _end(self, j: int) -> int:
        """Byte offset where token ``j`` of the tail starts."""
        return self._ends[j - 1] if j > 0 else 0

    def append(self, data: bytes) -> list[int]:
        """Append bytes; return the member's full token list for the new text."""
        lossless = self._end(len(self.tail)) == len(self.text)
        self.text += data
        n = len(self.tail)
        # Offsets come from the pieces; if the member could not spell some byte of the
        # text (see ByteVocab.byte_id) they no longer match it: re-tokenize everything.
        back = self.window if lossless else n
        while True:
            keep = max(0, n - back)  # tail[:keep] kept as is
            check = max(0, keep - self.verify)  # tail[check:keep] must be reproduced
            start = self._end(check)
            fresh = self.vocab.encode(self.text[start:], self._tokenize)
            self.retokenized += len(self.text) - start
            overlap = keep - check
            if check == 0 or fresh[:overlap] == self.tail[check:keep]:
                break
            back *= 2
        if check == 0:
            self.tail, self._ends = fresh, self._offsets(fresh, 0)
        else:
            added = fresh[overlap:]
            self._ends = self._ends[:keep] + self._offsets(added, self._end(keep))
            self.tail = self.tail[:keep] + added
        return self.tokens

    def append_tokens(self, ids: list[int]) -> list[int]:
        """Append the member's own tokens as they are (the primary member in primary mode)."""
        self.text += self.vocab.decode(ids)
        self._ends += self._offsets(ids, self._end(len(self.tail)))
        self.tail = self.tail + ids
        return self.tokens
