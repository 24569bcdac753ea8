"""A member that is another member with a different *style*: a hidden prompt prefix
and/or a temperature on its logits.

It exists to make the paper's Fig. 2 point with the models we have: Determine-Then-
Ensemble rejects a candidate whose answers are much longer (a verbose style) or whose
accuracy is far below the best.

* ``styled:verbose:MODEL`` never ends a line or the text on its own: its newline and
  end-of-generation logits are pushed to ~zero probability, so it keeps talking where the
  task wants a one-line answer, like a chatty model.  (A prompt prefix asking for long
  answers was tried first and changed nothing: the task's own few-shot block, which comes
  after it, sets the style.)
* ``styled:temperature=T:MODEL`` divides the logits by T.
* ``styled:prefix=TEXT:MODEL`` reads TEXT (after BOS) before every context; the KV cache
  still reuses the shared prefix between calls.

Options join with ``,`` (``styled:verbose,temperature=0.5:MODEL``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import InvalidConfigError
from ..scores import Scores
from .base import start_sequence

SUPPRESSED_LOGIT = -1e4
"""What ``verbose`` sets the newline and end-of-generation logits to: probability ~0."""


def parse_style(style: str) -> dict[str, Any]:
    out: dict[str, Any] = {"prefix": "", "temperature": 1.0, "verbose": False}
    for part in filter(None, style.split(",")):
        key, eq, value = part.partition("=")
        if key == "verbose" and not eq:
            out["verbose"] = True
        elif key == "prefix" and eq:
            out["prefix"] = value.replace("\\n", "\n")
        elif key == "temperature" and eq:
            try:
                out["temperature"] = float(value)
            except ValueError:
                raise InvalidConfigError(f"styled member: temperature {value!r} is not a number") from None
            if out["temperature"] <= 0:
                raise InvalidConfigError("styled member: temperature must be > 0")
        else:
            raise InvalidConfigError(f"styled member: unknown option {part!r} (known: verbose, temperature=T, prefix=TEXT)")
    return out


class StyledMember:
    """``styled:<options>:<base spec>``: the base member, restyled (see module docstring)."""

    def __init__(self, spec: str, *, name: str | None = None, **options: Any) -> None:
        from . import load_member

        style, sep, base = spec.partition(":")
        if not sep or not base:
            raise InvalidConfigError(f"styled member spec must be 'styled:<options>:<model>', got 'styled:{spec}'")
        settings = parse_style(style)
        self.inner = load_member(base, **options)
        self.style = style
        self.temperature = float(settings["temperature"])
        self.name = name or f"{self.inner.name}@{style}"
        self.path = getattr(self.inner, "path", None)
        self.vocab = self.inner.vocab
        self.chat_template = self.inner.chat_template
        self.bos_text = self.inner.bos_text
        self.eos_text = self.inner.eos_text
        self._prefix = self.inner.tokenize(settings["prefix"].encode(), add_bos=False) if settings["prefix"] else []
        self.n_ctx = self.inner.n_ctx - len(self._prefix)
        pieces = self.vocab.pieces
        self._suppress = (
            np.array([i for i, p in enumerate(pieces) if b"\n" in p or i in self.vocab.eog_ids], dtype=np.int64)
            if settings["verbose"]
            else None
        )

    @property
    def n_evaluated(self) -> int:
        return self.inner.n_evaluated

    def tokenize(self, text: bytes, *, add_bos: bool = False, special: bool = False) -> list[int]:
        return self.inner.tokenize(text, add_bos=add_bos, special=special)

    def next_logits(self, context: Sequence[int]) -> np.ndarray | Scores:
        # Unstyled, the inner member's result passes through as it is (a remote inner's Scores too).
        ctx = list(context)
        if self._prefix:
            lead = 1 if ctx and not self.vocab.pieces[ctx[0]] else 0  # keep BOS first
            ctx = ctx[:lead] + self._prefix + ctx[lead:]
        logits = self.inner.next_logits(ctx)
        if self._suppress is None and self.temperature == 1.0:
            return logits
        logits = np.array(logits, dtype=np.float32)  # a copy: the inner buffer belongs to llama.cpp
        if self._suppress is not None:
            logits[self._suppress] = SUPPRESSED_LOGIT
        return logits / self.temperature if self.temperature != 1.0 else logits

    def start_sequence(self) -> None:
        start_sequence(self.inner)

    def close(self) -> None:
        self.inner.close()

    def __repr__(self) -> str:
        return f"StyledMember({self.name!r})"
