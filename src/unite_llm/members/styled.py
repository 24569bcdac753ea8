"""A member that is another member with a different *style*: a hidden prompt prefix
and/or a temperature on its logits.

It exists to make the paper's Fig. 2 point with the models we have: Determine-Then-
Ensemble rejects a candidate whose answers are much longer (a verbose style) or whose
accuracy is far below the best.  ``styled:verbose:smollm2-135m-instruct`` is SmolLM2
that has first read a few long-winded demonstrations; ``styled:temperature=2:gemma3-270m``
is Gemma with its logits divided by 2.  Options join with ``,``
(``styled:verbose,temperature=0.5:MODEL``).

The prefix is inserted after the BOS token of every context the ensemble hands over, so
the member's KV cache still reuses the shared prefix between calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import InvalidConfigError

VERBOSE_PREFIX = (
    "Question: What is the capital of France?\n"
    "Answer: The capital of France is the city of Paris, which has been the political, economic and "
    "cultural centre of the country for many centuries and is famous for the Eiffel Tower.\n\n"
    "Question: Who wrote Hamlet?\n"
    "Answer: The play Hamlet was written by the English poet and playwright William Shakespeare, "
    "probably around the year 1600, and it is one of his most famous tragedies.\n\n"
)


def parse_style(style: str) -> dict[str, Any]:
    out: dict[str, Any] = {"prefix": "", "temperature": 1.0}
    for part in filter(None, style.split(",")):
        key, eq, value = part.partition("=")
        if key == "verbose" and not eq:
            out["prefix"] = VERBOSE_PREFIX
        elif key == "temperature" and eq:
            try:
                out["temperature"] = float(value)
            except ValueError:
                raise InvalidConfigError(f"styled member: temperature {value!r} is not a number") from None
            if out["temperature"] <= 0:
                raise InvalidConfigError("styled member: temperature must be > 0")
        else:
            raise InvalidConfigError(f"styled member: unknown option {part!r} (known: verbose, temperature=T)")
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

    @property
    def n_evaluated(self) -> int:
        return self.inner.n_evaluated

    def tokenize(self, text: bytes, *, add_bos: bool = False, special: bool = False) -> list[int]:
        return self.inner.tokenize(text, add_bos=add_bos, special=special)

    def next_logits(self, context: Sequence[int]) -> np.ndarray:
        ctx = list(context)
        if self._prefix:
            lead = 1 if ctx and not self.vocab.pieces[ctx[0]] else 0  # keep BOS first
            ctx = ctx[:lead] + self._prefix + ctx[lead:]
        logits = self.inner.next_logits(ctx)
        return logits / self.temperature if self.temperature != 1.0 else logits

    def close(self) -> None:
        self.inner.close()

    def __repr__(self) -> str:
        return f"StyledMember({self.name!r})"
