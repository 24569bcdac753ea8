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

The styled member forwards every ability of the member it wraps (:data:`~unite_llm.members.base.HOOKS`):
``reset`` and ``start_sequence`` (its prefix cache), ``next_logits_batch`` with ``max_rows`` and
``cheap_joins`` (batching: the style applied to every row), ``token_embeddings`` (the same
vocabulary), and ``score`` (one batched pass over the prefixed sequence) where the style leaves
the logits as they are (a prefix alone); a temperature or ``verbose`` changes every position's
distribution, so those are scored position by position through :meth:`StyledMember.next_logits`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import numpy as np

from ..errors import InvalidConfigError
from ..scores import Scores
from .base import MemberBase, abilities, joins_cheaply, reset_cache, start_sequence

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


class StyledMember(MemberBase):
    """``styled:<options>:<base spec>``: the base member, restyled, with its abilities (see the
    module docstring)."""

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
        inner = abilities(self.inner)
        forwarded = {"reset", "start_sequence", "next_logits_batch", "token_embeddings"}
        if self.restyles:  # a changed distribution: the inner member's own scores would be wrong
            forwarded.discard("score")
        else:
            forwarded.add("score")
        self.abilities = frozenset(inner & forwarded)
        self.max_rows = getattr(self.inner, "max_rows", None)
        self.cheap_joins = joins_cheaply(self.inner)

    @property
    def restyles(self) -> bool:
        """Whether the style changes the logits (``verbose`` or a temperature), not only the context."""
        return self._suppress is not None or self.temperature != 1.0

    @property
    def n_evaluated(self) -> int:
        return self.inner.n_evaluated

    def tokenize(self, text: bytes, *, add_bos: bool = False, special: bool = False) -> list[int]:
        return self.inner.tokenize(text, add_bos=add_bos, special=special)

    def _lead(self, ctx: Sequence[int]) -> int:
        """Where the prefix goes: after a leading BOS (a control token, no bytes), else first."""
        return 1 if ctx and not self.vocab.pieces[ctx[0]] else 0

    def _prefixed(self, context: Sequence[int]) -> list[int]:
        ctx = list(context)
        if self._prefix:
            lead = self._lead(ctx)
            ctx = ctx[:lead] + self._prefix + ctx[lead:]
        return ctx

    def _restyle(self, logits: Any) -> Any:
        """The style on one row's or a ``[rows, vocab]`` batch's logits (numpy, or a torch tensor
        left on its device); a copy, as the inner buffer belongs to the backend."""
        if not self.restyles:
            return logits
        if type(logits).__module__.startswith("torch"):
            out = logits.clone()
        else:
            out = np.array(logits, dtype=np.float32)
        if self._suppress is not None:
            out[..., self._suppress] = SUPPRESSED_LOGIT
        return out / self.temperature if self.temperature != 1.0 else out

    def next_logits(self, context: Sequence[int]) -> np.ndarray | Scores:
        # Unstyled, the inner member's result passes through as it is (a remote inner's Scores too).
        logits = self.inner.next_logits(self._prefixed(context))
        return cast("np.ndarray | Scores", self._restyle(logits))

    def next_logits_batch(self, contexts: Sequence[Sequence[int]], rows: Sequence[int] | None = None) -> Any:
        """Every row prefixed, scored by the inner member in one pass, and restyled."""
        inner = cast(Any, self.inner)
        return self._restyle(inner.next_logits_batch([self._prefixed(c) for c in contexts], rows))

    def score(self, tokens: Sequence[int], start: int = 1, top: int = 0) -> Any:
        """The inner member's one-pass scores of the prefixed sequence (declared only where the
        style leaves the logits as they are); positions from ``start`` on, as for the inner member."""
        if self.restyles:
            raise TypeError(f"{self.name}: a restyled member has no one-pass score (its style changes the logits)")
        tokens = list(tokens)
        lead = self._lead(tokens)
        if start < lead:
            raise ValueError(f"start must be >= {lead} (the BOS stays first), got {start}")
        inner = cast(Any, self.inner)
        if top:
            return inner.score(self._prefixed(tokens), start + len(self._prefix), top=top)
        return inner.score(self._prefixed(tokens), start + len(self._prefix))

    def token_embeddings(self) -> np.ndarray:
        return np.asarray(cast(Any, self.inner).token_embeddings())

    def reset(self) -> None:
        reset_cache(self.inner)

    def start_sequence(self) -> None:
        start_sequence(self.inner)

    def close(self) -> None:
        self.inner.close()

    def __repr__(self) -> str:
        return f"StyledMember({self.name!r})"
