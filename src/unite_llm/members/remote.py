"""What a member in another process returns instead of 262k logits.

The UniTE step reads a member's logits in two ways only: the top-k ids (ranked where
the logits live) and the scores of the union's candidate ids (see
:mod:`unite_llm.methods.unite`).  :class:`RemoteLogits` serves both from a small
cache filled by the member's step answer (its top-k ids and their logits, plus the
end-of-generation ids) and asks the member for any other id in one batched call.
Only a few dozen numbers cross the wire per step; ``np.asarray`` on it still fetches
the full vector for code that really wants one.

Like a local member's logits (a view into the backend's buffer), a RemoteLogits is
valid only until that member's next ``next_logits`` call; using it later is a bug and
raises instead of returning another step's numbers.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import numpy as np
import numpy.typing as npt

from ..candidates import candidate_of, candidate_text
from ..vocab import ByteVocab

TopFetch = Callable[[int, bool], tuple[Sequence[int], Sequence[float]]]
Fetch = Callable[[list[int]], tuple[Sequence[float], Sequence[int]]]
"""ids -> (their scores, the ids among them that are only bounds)."""


@dataclass
class WireStats:
    """Bytes and calls between the ensemble and a remote member (pickled/JSON payloads)."""

    calls: int = 0
    sent: int = 0
    received: int = 0
    seconds: float = 0.0

    def add(self, sent: object, received: object, seconds: float) -> None:
        self.calls += 1
        self.sent += sent if isinstance(sent, int) else len(pickle.dumps(sent, protocol=5))
        self.received += received if isinstance(received, int) else len(pickle.dumps(received, protocol=5))
        self.seconds += seconds


@dataclass
class RemoteLogits:
    """One step of a remote member's scores (see the module docstring)."""

    vocab: ByteVocab
    known: dict[int, float]
    tops: dict[tuple[int, bool], list[int]]
    """Top-k lists already computed remotely, by ``(k, ignore_eos)``."""
    fetch_top: TopFetch | None
    fetch: Fetch
    fetch_full: Callable[[], np.ndarray] | None
    is_current: Callable[[], bool]
    rank: Callable[[ByteVocab, int, bool], list[int]] | None = None
    """Ranks ``known`` locally when the member cannot compute a top-k list itself."""
    approximated: list[str] = field(default_factory=list)
    """Texts of candidates whose score is a bound, not the member's number (shown in
    the step record); empty for members that can answer exactly."""

    def _check(self) -> None:
        if not self.is_current():
            raise RuntimeError("these remote logits are stale: the member has stepped since")

    def _text(self, tid: int) -> str:
        return candidate_text(candidate_of(tid, self.vocab))

    def top_k_ids(self, vocab: ByteVocab, k: int, *, ignore_eos: bool = False) -> list[int]:
        self._check()
        key = (k, ignore_eos)
        if key not in self.tops:
            if self.fetch_top is None:
                if self.rank is None:
                    raise RuntimeError("this remote member computed no top-k list for these settings")
                self.tops[key] = self.rank(vocab, k, ignore_eos)
                return self.tops[key]
            ids, values = self.fetch_top(k, ignore_eos)
            self.tops[key] = list(ids)
            self.known.update(zip(ids, values))
        return self.tops[key]

    def at(self, ids: Sequence[int]) -> np.ndarray:
        self._check()
        missing = sorted({int(t) for t in ids} - self.known.keys())
        if missing:
            values, bounded = self.fetch(missing)
            self.known.update(zip(missing, (float(v) for v in values)))
            self.approximated.extend(self._text(t) for t in bounded)
        return np.array([self.known[int(t)] for t in ids], dtype=np.float64)

    def __getitem__(self, tid: int) -> float:
        return float(self.at([int(tid)])[0])

    def __len__(self) -> int:
        return len(self.vocab)

    def __array__(self, dtype: npt.DTypeLike | None = None, copy: bool | None = None) -> np.ndarray:
        self._check()
        if self.fetch_full is None:
            raise TypeError("this remote member cannot send its full logits")
        full = self.fetch_full()
        return full if dtype is None else full.astype(dtype)


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """Per-member options written on the spec, so that one ensemble can mix placements:
    ``"gemma3-270m?num_gpus=1&n_ctx=2048"`` -> ``("gemma3-270m", {"num_gpus": 1, "n_ctx": 2048})``."""
    inner, sep, query = spec.rpartition("?") if "?" in spec else (spec, "", "")
    options: dict[str, Any] = {}
    for key, raw in parse_qsl(query, keep_blank_values=True, strict_parsing=bool(sep)):
        value: Any = raw
        for cast in (int, float):
            try:
                value = cast(raw)
                break
            except ValueError:
                pass
        options[key] = value
    return inner, options
