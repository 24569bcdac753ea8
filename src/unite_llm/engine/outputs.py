"""What a generation returns: the output, each step's record, the timing, stream chunks.

These are the engine's only types that leave it (the server writes them out,
``GenerationOutput.to_dict`` is the CLI's ``--json``), kept apart from the loop that fills them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class UnionEntry:
    """One candidate of a step's union, as :class:`StepRecord` keeps it (and ``to_dict``
    writes it: these fields, in this order, are the wire format of ``unite.union``)."""

    text: str
    """The candidate's text (``<END>`` for END; partial UTF-8 shown escaped)."""
    end: bool
    """True for the END candidate, whatever ``text`` reads."""
    prob: float
    """The ensemble's probability of the candidate."""
    members: dict[str, float]
    """Each consulted member's renormalised probability of it."""
    rules: dict[str, str]
    """Each consulted member's rule (UniTE: topk, vocab, subtoken, end, none); empty when the
    step method has none."""


@dataclass
class StepRecord:
    """What happened at one step."""

    index: int
    chosen: str
    """The appended text (``<END>`` for end of sequence; partial UTF-8 shown escaped)."""
    prob: float
    """The ensemble's probability of the choice."""
    union_size: int
    member_probs: dict[str, float]
    """Each member's renormalised probability of the choice."""
    union: list[UnionEntry] = field(default_factory=list)
    """Every candidate: text, ensemble prob, each member's prob and the rule used."""
    approximated: list[str] = field(default_factory=list)
    """``"member: candidate"`` for each probability a remote member could only bound
    (see :mod:`unite_llm.members.openai`); empty when every number is exact."""
    aligned: int = 0
    """Tokens the step method aligned across vocabularies (UniTE: the union; GaC: the whole union vocabulary)."""
    end: bool = False
    """True when the step chose END (the generation stopped; ``chosen`` then reads ``<END>``,
    which a real text piece ``<END>`` can also read: test this flag, not the text)."""
    ensembled: bool = True
    """False when the confidence gate was closed: the primary chose alone and the partners
    were not run (``member_probs`` and ``union`` then hold the primary only)."""

    def to_dict(self, *, full: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if not full:
            d.pop("union")
        return d


@dataclass
class Timing:
    load_s: float = 0.0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    steps: int = 0
    members_s: float = 0.0
    """Of ``decode_s``, the time spent inside the members (their forward passes); the
    rest is the ensemble's own overhead (step method, choice, re-tokenization).  In a batch
    the forward passes are shared: each row counts every pass it took part in."""
    prepare_s: float = 0.0
    """Time in the step method's ``prepare`` hook (vocabulary maps on first use, per-prompt weights)."""

    @property
    def step_ms(self) -> float:
        return 1000 * self.decode_s / self.steps if self.steps else 0.0


@dataclass
class GenerationOutput:
    """A finished generation (like vLLM's ``CompletionOutput``)."""

    text: str
    output_bytes: bytes
    finish_reason: str
    """``"stop"`` (END or a stop string) or ``"length"`` (max_new_tokens or context)."""
    stop_reason: str | None
    """The stop string that ended it; None for END or length."""
    steps: list[StepRecord]
    timing: Timing
    prompt_tokens: dict[str, int]

    def to_dict(self, *, full: bool = False) -> dict[str, Any]:
        return {
            "text": self.text,
            "finish_reason": self.finish_reason,
            "stop_reason": self.stop_reason,
            "prompt_tokens": self.prompt_tokens,
            "steps": [s.to_dict(full=full) for s in self.steps],
            "timing": asdict(self.timing),
        }


@dataclass
class StreamChunk:
    """One step of a stream: the text now safe to show, and the step behind it."""

    text: str
    step: StepRecord | None
    output: GenerationOutput | None = None
    """Set on the last chunk only."""
