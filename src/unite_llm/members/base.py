"""The one small protocol every ensemble member implements.

A member is a language model seen through four things: a byte-level vocabulary, a
tokenizer, a chat template, and ``next_logits(context)``: "make your context exactly
these token ids and score the next token".  A member belongs to one ensemble at a time,
which steps it from one generation at a time (``Ensemble.exclusive``); a member is not
thread-safe by itself.  How the member gets there (KV-cache
rollback in llama.cpp, ``DynamicCache.crop`` in transformers, an actor on another
machine) is its own business; the decode loop only ever hands over full contexts, and
the member evaluates only what differs from the context it already holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, cast, runtime_checkable

import numpy as np

from ..errors import ContextLengthError
from ..mathops import log_softmax
from ..scores import Scores
from ..vocab import ByteVocab

HOOKS = ("reset", "start_sequence", "score", "next_logits_batch", "token_embeddings")
"""The optional methods a member may have; it declares which in ``abilities`` (:class:`MemberBase`).

* ``reset()`` forgets the KV cache (:func:`reset_cache`);
* ``start_sequence()`` marks the start of a generation (:func:`start_sequence`);
* ``score(tokens, start, top=0)`` scores a whole sequence in one pass (:func:`token_logprobs`);
* ``next_logits_batch(contexts, rows)`` scores many rows in one pass (:class:`BatchMember`);
* ``token_embeddings()`` gives the input embedding matrix (DeePEn).

Two declared values go with them: ``max_rows`` (rows per batched call; None: unbounded) and
``cheap_joins`` (a row joins a running batch without the others being re-evaluated)."""


@runtime_checkable
class Member(Protocol):
    """An ensemble member (one model, one tokenizer, one KV cache)."""

    name: str
    """Short display name, unique within an ensemble."""

    vocab: ByteVocab
    """Token id <-> exact bytes, and the end-of-generation ids."""

    n_ctx: int
    """Context window in tokens."""

    chat_template: str | None
    """Jinja chat template from the model's own metadata, if it has one."""

    bos_text: str
    """How the BOS token is spelled in a rendered chat template ('' if none)."""

    eos_text: str
    """How the EOS token is spelled in a rendered chat template ('' if none)."""

    n_evaluated: int
    """Tokens run through the model so far (prefill + decode); proves no re-encoding."""

    def tokenize(self, text: bytes, *, add_bos: bool = False, special: bool = False) -> list[int]:
        """The member's own tokenizer on valid UTF-8 ``text``."""
        ...

    def next_logits(self, context: Sequence[int]) -> np.ndarray | Scores:
        """Make the member's context exactly ``context``; return next-token scores.

        Log-probabilities up to an additive constant: an in-process member returns a
        float32 vector over its full vocabulary (the loop reads it as
        :class:`~unite_llm.scores.DenseScores`); a member in another process returns a
        small object meeting the :class:`~unite_llm.scores.Scores` contract (ranking and id
        lookup), so that only what the step reads crosses the wire.  Either may be a view
        into the backend's buffer, valid until the next call.  Implementations keep their
        KV cache for the longest common prefix with the previous context and evaluate only
        the rest.
        """
        ...

    def close(self) -> None:
        """Free the model."""
        ...


class MemberBase:
    """What a member class declares besides the :class:`Member` protocol: its ``abilities``
    (the optional :data:`HOOKS` it implements), ``max_rows`` and ``cheap_joins``.

    The builtin members subclass it; a member written to the protocol alone works too (its
    hooks are then found once, when it is loaded: :func:`abilities`).  A wrapper that forwards
    to another member (:class:`~unite_llm.members.styled.StyledMember`) declares per instance
    what the member it wraps can do.
    """

    abilities: frozenset[str] = frozenset()
    max_rows: int | None = None
    """Rows :meth:`next_logits_batch` takes at once (None: unbounded; 1: batches go row by row)."""
    cheap_joins: bool = False


def abilities(member: Any) -> frozenset[str]:
    """The optional hooks ``member`` has: what it declares (:class:`MemberBase`), or, for a member
    that declares nothing, the :data:`HOOKS` it has, found once and recorded on it."""
    declared = getattr(member, "abilities", None)
    if declared is None:
        declared = frozenset(h for h in HOOKS if callable(getattr(member, h, None)))
        try:
            member.abilities = declared
        except AttributeError:  # a class that cannot take attributes: found again next time
            pass
    return frozenset(declared)


def check_abilities(member: Any) -> frozenset[str]:
    """At load: every declared ability is a known hook the member implements (a ``TypeError``
    naming the member otherwise, before anything calls it); returns them."""
    declared = abilities(member)
    unknown = sorted(declared - set(HOOKS))
    missing = sorted(h for h in declared & set(HOOKS) if not callable(getattr(member, h, None)))
    name = getattr(member, "name", type(member).__name__)
    if unknown:
        raise TypeError(f"member {name} declares unknown abilities {unknown} (known: {', '.join(HOOKS)})")
    if missing:
        raise TypeError(f"member {name} declares {missing} but has no such method")
    return declared


def can(member: Any, ability: str) -> bool:
    """Whether ``member`` declares ``ability`` (one of :data:`HOOKS`)."""
    return ability in abilities(member)


def joins_cheaply(member: Any) -> bool:
    """Whether a row can join ``member``'s running batch without the others being re-evaluated."""
    return bool(getattr(member, "cheap_joins", False))


def check_context(member: Any, n_tokens: int) -> None:
    """The one context-length check: a :class:`~unite_llm.errors.ContextLengthError` when
    ``n_tokens`` do not fit ``member``'s window."""
    if n_tokens > member.n_ctx:
        raise ContextLengthError(f"{member.name}: {n_tokens} tokens do not fit its context window of {member.n_ctx}")


def reset_cache(member: Member) -> None:
    """Forget a member's KV cache, where the backend can (optional ``reset()`` method).

    Why: llama.cpp's batched and single-token kernels round differently, so logits after
    reusing a prefix that was computed inside another batch can differ in the last bits
    from a cold evaluation and flip a greedy near-tie.  Without prefix caching every
    generation is a function of its prompt alone.
    """
    if can(member, "reset"):
        cast(Any, member).reset()


def start_sequence(member: Member) -> None:
    """Tell a member that its next ``next_logits`` call starts a new generation (optional
    ``start_sequence()`` method).

    Why: a backend whose logits depend on how a prefix was batched (llama.cpp) evaluates
    every generation's prompt by one plan that is a function of the prompt alone, and reuses
    only cache entries that plan would have computed itself; the calls that follow within
    the generation are decode steps that may reuse everything.  Only the caller knows where
    a generation starts: a new prompt can look exactly like a continuation of the last one.
    """
    if can(member, "start_sequence"):
        cast(Any, member).start_sequence()


@runtime_checkable
class BatchMember(Member, Protocol):
    """A member that can also score many contexts in one forward pass (optional).

    ``next_logits_batch(contexts, rows)`` returns ``[len(contexts), vocab]`` float32
    scores: a numpy array, or a torch tensor left on the member's device so that the
    batched step takes its top-k there and copies out only the union's candidates.
    ``rows`` names the contexts (default ``0..B-1``): a name continues the KV state of
    the same name from the previous call (only each row's new suffix is evaluated),
    names not given again are dropped (finished rows), and new names join (a row that
    joins a running batch; a backend may rebuild the batch's cache for it, as
    transformers members do).  An optional ``max_rows`` caps the rows per call
    (llama.cpp's ``n_seq``); a member with ``max_rows == 1``, or without the method,
    decodes batches row by row.  ``cheap_joins = True`` says a row can join a running batch
    without the others being re-evaluated (llama.cpp), so ``generate_batch`` refills a row as
    soon as one finishes instead of running fixed groups.
    """

    def next_logits_batch(self, contexts: Sequence[Sequence[int]], rows: Sequence[int] | None = None) -> Any: ...


def supports_batch(member: Member) -> bool:
    """Whether ``member`` scores a batch in one pass (see :class:`BatchMember`)."""
    return can(member, "next_logits_batch") and batch_rows(member) > 1


def batch_rows(member: Member) -> int:
    """How many rows ``member`` scores in one pass (``max_rows``; unbounded if it sets none)."""
    rows = getattr(member, "max_rows", None)
    return int(rows) if rows is not None else 2**31 - 1


def forward_rows(member: Member, contexts: Sequence[Sequence[int]], rows: Sequence[int]) -> Any:
    """``[B, vocab]`` scores for one member over many rows (one pass where it can)."""
    if supports_batch(member):
        return cast(BatchMember, member).next_logits_batch(contexts, rows)
    # next_logits may return a view into the backend's buffer: copy each row.
    return np.stack([np.array(member.next_logits(ctx), dtype=np.float32) for ctx in contexts])


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token sequences.

    Called per member per step on the whole context, where the sequences differ (if at
    all) only near the end: a slice comparison (C speed) skips the agreeing bulk, and
    only the last few positions are walked in Python.
    """
    n = min(len(a), len(b))
    i = max(0, n - 64)
    if a[:i] != b[:i]:
        i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def token_logprobs(member: Member, tokens: Sequence[int], start: int = 1) -> np.ndarray:
    """Log-probability of each of ``tokens[start:]`` under ``member``, given what precedes it.

    PackLLM weighs members by their perplexity on the prompt and the response-level
    ranker scores whole answers, so both need per-position log-likelihoods.  A member
    may provide an optional ``score(tokens, start)`` that does this in one batched pass
    (:class:`~unite_llm.members.llama_cpp.LlamaCppMember` does); any other member falls
    back to ``next_logits`` one position at a time, which is correct but slower.
    """
    if can(member, "score"):
        return np.asarray(cast(Any, member).score(tokens, start), dtype=np.float64)
    out = np.empty(len(tokens) - start, dtype=np.float64)
    for target in range(start, len(tokens)):
        out[target - start] = log_softmax(np.asarray(member.next_logits(tokens[:target])))[tokens[target]]
    return out


def token_top_logprobs(member: Member, tokens: Sequence[int], start: int, top: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`token_logprobs` with each position's ``top`` most probable tokens too:
    ``(logprobs, top_ids, top_logprobs)``, the last two ``[len(tokens) - start, top]``, best first.

    The server's echoed prompts need them (OpenAI's ``top_logprobs``, lm-eval's ``is_greedy``).
    A member's ``score(tokens, start, top=n)`` does it in its one pass; others go position by
    position through ``next_logits``.
    """
    if can(member, "score"):
        lps, ids, tlps = cast(Any, member).score(tokens, start, top=top)
        return np.asarray(lps, dtype=np.float64), np.asarray(ids), np.asarray(tlps, dtype=np.float64)
    n = len(tokens) - start
    lps, ids, tlps = np.empty(n), np.zeros((n, top), dtype=np.int64), np.full((n, top), -np.inf)
    for row, target in enumerate(range(start, len(tokens))):
        dist = log_softmax(np.asarray(member.next_logits(tokens[:target])))
        lps[row] = dist[tokens[target]]
        k = min(top, len(dist))
        best = np.argsort(-dist, kind="stable")[:k]
        ids[row, :k], tlps[row, :k] = best, dist[best]
    return lps, ids, tlps
