"""Small stand-in members for the fast test tier (``pytest -m "not slow"``).

They implement the real :class:`~unite_llm.members.base.Member` protocol with a toy
model, so the decode loop's own logic (finish reasons, stop strings, batching, prepare
hooks, primary mode, threads) is tested in milliseconds.  What they cannot stand in for,
real tokenizers and real logits, is tested on the real models in the slow tier.

Two vocabularies that disagree on merges (like two real tokenizers do): both have every
printable ASCII byte, each has its own multi-byte pieces, so a candidate of one member is
often outside the other's vocabulary and the first-sub-token rule runs.  Scores are a
deterministic function of the text so far: same context, same logits, in any order.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Sequence

import numpy as np

from unite_llm.vocab import ByteVocab

WORDS = {
    "left": [b" the", b" cat", b" sat", b" on", b" mat", b"ing", b" dog", b"er", b"\n"],
    "right": [b" th", b"e cat", b" s", b"at", b" on the", b" mat", b" do", b"g", b"\n\n", b"\n"],
}


class FakeMember:
    """A member with a toy vocabulary and deterministic scores (see the module docstring).

    ``batch=True`` adds ``next_logits_batch`` (a member that scores many rows in one call).
    ``delay`` sleeps in each call, giving other threads a chance to interleave.
    """

    def __init__(self, name: str = "left", *, n_ctx: int = 512, end_after: int = 40, batch: bool = False, delay: float = 0.0):
        pieces = [b"", b""] + [bytes([c]) for c in range(32, 127)] + WORDS[name]
        self.name = name
        self.vocab = ByteVocab(pieces, frozenset({1}))  # id 0: BOS (control), id 1: EOS
        self.n_ctx = n_ctx
        self.chat_template: str | None = None
        self.bos_text = ""
        self.eos_text = ""
        self.n_evaluated = 0
        self.end_after = end_after
        self.delay = delay
        self.calls = 0
        self._busy = threading.Lock()
        self._longest = max(len(p) for p in pieces)
        self._by_bytes = {p: i for i, p in enumerate(pieces) if p}
        if batch:
            self.next_logits_batch = self._next_logits_batch

    def tokenize(self, text: bytes, *, add_bos: bool = False, special: bool = False) -> list[int]:
        ids, pos = ([0] if add_bos else []), 0
        while pos < len(text):
            for end in range(min(len(text), pos + self._longest), pos, -1):
                tid = self._by_bytes.get(text[pos:end])
                if tid is not None:
                    ids.append(tid)
                    pos = end
                    break
            else:
                pos += 1  # a byte this toy vocabulary lacks is dropped, as real tokenizers drop some
        return ids

    def next_logits(self, context: Sequence[int]) -> np.ndarray:
        if not self._busy.acquire(blocking=False):
            raise RuntimeError(f"{self.name}: called from two threads at once")
        try:
            if self.delay:
                threading.Event().wait(self.delay)
            self.calls += 1
            self.n_evaluated += 1
            return self.scores(context)
        finally:
            self._busy.release()

    def scores(self, context: Sequence[int]) -> np.ndarray:
        """Logits from the last 12 bytes of the text: a function of the context alone."""
        text = self.vocab.decode(context)
        seed = zlib.crc32(self.name.encode() + text[-12:])
        rng = np.random.default_rng(seed)
        logits = rng.normal(0.0, 2.0, size=len(self.vocab)).astype(np.float32)
        logits[0] = -1e9  # BOS is never predicted
        logits[1] = 3.0 * (len(text) / self.end_after - 1.0)  # END grows likelier with length
        return logits

    def _next_logits_batch(self, contexts: Sequence[Sequence[int]], rows: Sequence[int] | None = None) -> np.ndarray:
        self.calls += 1
        self.n_evaluated += len(contexts)
        return np.stack([self.scores(c) for c in contexts])

    def token_embeddings(self) -> np.ndarray:
        """Embeddings for DeePEn: one vector per piece, from the piece's bytes."""
        return np.stack(
            [
                np.random.default_rng(zlib.crc32(p or bytes([i]))).normal(size=8).astype(np.float32)
                for i, p in enumerate(self.vocab.pieces)
            ]
        )

    def close(self) -> None:
        pass
