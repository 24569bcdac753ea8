"""Log-likelihoods of text under an ensemble whose members have different tokenizers.

A member's probability of a token sequence is not comparable across tokenizers, but its
probability of a *byte string* is: every member is a distribution over texts.  So each
member scores the continuation's bytes in its own tokenization, and the ensemble's
likelihood is the mixture of the members' sequence probabilities::

    base_i  = tok_i(context)                          (as the ensemble would prompt member i)
    full_i  = tok_i(context + continuation)           (the same track, continuation appended)
    s_i     = common_prefix(base_i, full_i)           (a context tail can re-merge: "Answer: " + "Paris")
    ll_i    = sum_{t >= s_i} log p_i(full_i[t] | full_i[:t])
    ll      = log sum_i w_i exp(ll_i)                 (w: the ensemble's normalised weights)

``ll_i`` is the member's log-probability of ``full_i[s_i:]``, the continuation's bytes
plus whatever tail of the context its first tokens re-merged with (usually nothing; a
trailing space, a character split between context and continuation, a CJK pair that one
token spells).  That is the convention lm-evaluation-harness's own ``hf`` model uses
(a context's trailing whitespace is scored with the continuation) generalised to any
re-merge, without assuming that ``tok(context)`` is a prefix of ``tok(context +
continuation)``.  A one-member ensemble gives exactly that member's own log-likelihood
(``log(1) = 0``, and a one-element log-sum-exp is the element).

Where a member's tokens for the context are empty (an empty context, or one that re-merges
whole with the continuation, for a tokenizer that adds no BOS), the member's prefix token
goes first (BOS if it has one, else its EOS: lm-eval's ``prefix_token_id``).  A context
ending in an incomplete UTF-8 sequence (the ensemble's output can, mid-character) is
tokenized as the decode loop does: the valid text by the tokenizer, the partial character
appended through :class:`~unite_llm.sync.TokenTrack`.

``rolling_loglik`` is lm-eval's ``loglikelihood_rolling``: the log-probability of a whole
text after the prefix token, every token predicted once, with windows of the member's
context (``n_ctx - 1`` tokens) rolling over a longer text; the ensemble's is again the
mixture of the members' whole-text probabilities.  :func:`greedy_reproduces` says whether
the ensemble's own greedy decode of the context begins with the continuation
(lm-eval's ``is_greedy``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ContextLengthError, InvalidConfigError, InvalidInputError
from .members.base import Member, common_prefix, token_logprobs
from .prompts import as_utf8, render_chat
from .sync import TokenTrack
from .vocab import incomplete_utf8_tail

if TYPE_CHECKING:
    from .engine import Ensemble

Text = str | bytes


@dataclass(frozen=True)
class Chat:
    """A chat context: the same messages, rendered with each member's *own* chat template
    (as ``Ensemble.generate(..., chat=True)`` renders a prompt).

    ``add_generation_prompt=False`` continues the last (assistant) message instead of opening
    a new turn, as transformers' ``continue_final_message``: the rendering is cut right after
    that message's content.
    """

    messages: tuple[Mapping[str, Any], ...]
    add_generation_prompt: bool = True

    def render(self, member: Member) -> str:
        text = render_chat(member, list(self.messages), add_generation_prompt=self.add_generation_prompt)
        if not self.add_generation_prompt and self.messages:
            last = str(self.messages[-1].get("content", ""))
            at = text.rfind(last) if last else -1
            if at < 0:
                raise InvalidInputError(f"{member.name}'s chat template does not write the final message as it is")
            text = text[: at + len(last)]
        return text


Context = Text | Chat


def member_context(member: Member, context: Context) -> Text:
    """The context as ``member`` reads it: raw text as it is, a :class:`Chat` in its own template."""
    return context.render(member) if isinstance(context, Chat) else context


@dataclass
class MemberLoglik:
    """One member's log-likelihood of a continuation."""

    logprob: float
    tokens: list[int]
    """The member's tokens that were scored (``full[s:]``)."""
    span: bytes
    """What those tokens spell: the continuation, after any re-merged tail of the context."""


def _bytes(text: Text) -> bytes:
    return text if isinstance(text, bytes) else text.encode("utf-8")


def prefix_token(member: Member) -> int:
    """The token a text with no context starts from: BOS if the member has one, else its EOS."""
    for spelled in (member.bos_text, member.eos_text):
        if spelled:
            ids = member.tokenize(spelled.encode("utf-8"), special=True)
            if len(ids) == 1:
                return ids[0]
    if member.vocab.eog_ids:
        return min(member.vocab.eog_ids)
    raise InvalidConfigError(f"{member.name} has neither a BOS nor an EOS token to start a text from")


def context_track(member: Member, context: Text) -> TokenTrack:
    """The member's token track for a raw-text ``context``, as :func:`~unite_llm.prompts.start_track`
    builds it (BOS unless the text spells it, special tokens parsed, the tokens up to the last
    control token frozen), without its context-length check, and open to a partial UTF-8 tail."""
    data = _bytes(context)
    cut = len(data) - incomplete_utf8_tail(data)
    head, tail = as_utf8(data[:cut], "context"), data[cut:]
    ids: list[int] = []
    if head:
        add_bos = not (member.bos_text and head.startswith(member.bos_text.encode()))
        ids = member.tokenize(head, add_bos=add_bos, special=True)
    pieces = member.vocab.pieces
    last_control = max((i for i, t in enumerate(ids) if not pieces[t]), default=-1)
    track = TokenTrack(member.vocab, member.tokenize, ids[: last_control + 1], member.vocab.decode(ids[last_control + 1 :]))
    if tail:
        track.append(tail)
    return track


def member_loglik(member: Member, context: Context, continuation: Text) -> MemberLoglik:
    """``member``'s log-probability of ``continuation`` after ``context`` (see the module docstring).

    Longer than the member's context window, the oldest tokens of the context are dropped
    (as lm-eval does); a continuation that alone does not fit is a :class:`ContextLengthError`.
    """
    track = context_track(member, member_context(member, context))
    base = list(track.tokens)
    cont = _bytes(continuation)
    full = list(track.append(cont)) if cont else base
    start = common_prefix(base, full)
    if start == 0:  # nothing before the continuation's first token: give it the prefix token
        full = [prefix_token(member), *full]
        start = 1
    if start >= len(full):
        return MemberLoglik(0.0, [], b"")
    if len(full) > member.n_ctx:
        cut = len(full) - member.n_ctx
        if start - cut < 1:
            raise ContextLengthError(
                f"{member.name}: the continuation is {len(full) - start} tokens, more than its {member.n_ctx}-token context holds"
            )
        full, start = full[cut:], start - cut
    lps = token_logprobs(member, full, start)
    scored = full[start:]
    return MemberLoglik(float(lps.sum()), scored, member.vocab.decode(scored))


def rolling_windows(tokens: Sequence[int], prefix: int, max_len: int) -> Iterator[tuple[list[int], int]]:
    """lm-eval's rolling windows (``get_rolling_token_windows`` with ``context_len=1``, made
    disjoint): ``(sequence, start)`` pairs whose scored parts ``sequence[start:]`` cover
    ``tokens`` once each, every one conditioned on up to ``max_len - 1`` tokens before it."""
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    tokens = list(tokens)
    seq = [prefix, *tokens]  # seq[j + 1] is tokens[j]; seq[0] only conditions
    done = 0
    while done < len(tokens):
        end = min(len(tokens), done + max_len)
        first = max(0, end - max_len)  # seq[first : end + 1]: max_len inputs predicting the last max_len
        yield seq[first : end + 1], done + 1 - first
        done = end


def member_rolling_loglik(member: Member, text: Text) -> float:
    """``member``'s log-probability of the whole ``text`` after its prefix token (rolling windows)."""
    data = _bytes(text)
    tokens = member.vocab.encode(data, member.tokenize)
    total = 0.0
    for seq, start in rolling_windows(tokens, prefix_token(member), member.n_ctx - 1):
        total += float(token_logprobs(member, seq, start).sum())
    return total


def mixture(logprobs: Sequence[float], weights: Sequence[float] | np.ndarray) -> float:
    """``log sum_i w_i exp(ll_i)`` with normalised weights; exactly ``ll_0`` for one member."""
    lls = np.asarray(logprobs, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if len(lls) == 1:
        return float(lls[0])
    terms = np.log(w) + lls
    top = float(terms.max())
    if top == -math.inf:
        return -math.inf
    return top + math.log(float(np.exp(terms - top).sum()))


def _each_member(ensemble: Ensemble, fn: Callable[[Member], float], pool: ThreadPoolExecutor | None) -> list[float]:
    """``fn`` on every member, in the ensemble's turn (no generation runs on them meanwhile)."""
    with ensemble.exclusive():
        if pool is None or len(ensemble.members) == 1:
            return [fn(m) for m in ensemble.members]
        futures = [pool.submit(fn, m) for m in ensemble.members]
        return [f.result() for f in futures]


def ensemble_loglik(
    ensemble: Ensemble, context: Context, continuation: Text, *, pool: ThreadPoolExecutor | None = None
) -> tuple[float, list[float]]:
    """The ensemble's log-likelihood of ``continuation`` after ``context`` and each member's.

    ``pool`` scores the members in threads (llama.cpp and torch release the GIL); each
    member is used by one thread at a time.
    """
    lls = _each_member(ensemble, lambda m: member_loglik(m, context, continuation).logprob, pool)
    return mixture(lls, ensemble.weights), lls


def ensemble_rolling_loglik(
    ensemble: Ensemble, text: Text, *, pool: ThreadPoolExecutor | None = None
) -> tuple[float, list[float]]:
    """The ensemble's log-likelihood of the whole ``text`` (lm-eval's ``loglikelihood_rolling``) and each member's."""
    lls = _each_member(ensemble, lambda m: member_rolling_loglik(m, text), pool)
    return mixture(lls, ensemble.weights), lls


def greedy_prefixes(ensemble: Ensemble, context: Text | Chat, continuations: Sequence[Text]) -> list[bool]:
    """For each continuation, whether the ensemble's greedy decode of ``context`` begins with it.

    One decode serves every continuation of the context (the choices of a question).  It
    stops as soon as its output is no longer a prefix of any undecided continuation
    (usually within a step or two), so it costs the longest agreeing prefix plus one step;
    every step appends at least one byte, so ``max(len(c))`` steps always decide.  A context
    the ensemble cannot start from (empty for a member without BOS, or too long for a
    member's window) reproduces nothing: all False; so does a chat that continues its last
    message (the ensemble decodes chats from a new assistant turn only).
    """
    wants = [_bytes(c) for c in continuations]
    decided: list[bool | None] = [True if not w else None for w in wants]

    def settle(got: bytes, final: bool) -> bool:
        for j, w in enumerate(wants):
            if decided[j] is None:
                if got.startswith(w):
                    decided[j] = True
                elif final or not w.startswith(got):
                    decided[j] = False
        return all(d is not None for d in decided)

    if isinstance(context, Chat) and not context.add_generation_prompt:
        settle(b"", True)
    if not settle(b"", False):
        got = b""
        chat = isinstance(context, Chat)
        prompt: Any = list(context.messages) if isinstance(context, Chat) else context
        try:
            steps = max(len(w) for w in wants)
            stream = ensemble.stream(prompt, max_new_tokens=steps, temperature=0.0, chat=chat)
            with contextlib.closing(stream) as chunks:
                for chunk in chunks:
                    if chunk.output is not None:
                        settle(chunk.output.output_bytes, True)
                        break
                    got += chunk.text.encode("utf-8")  # complete UTF-8 only: the stream holds partial characters back
                    if settle(got, False):
                        break
        except (InvalidInputError, ContextLengthError):
            pass
    return [bool(d) for d in decided]


def greedy_reproduces(ensemble: Ensemble, context: str | Chat, continuation: Text) -> bool:
    """Whether the ensemble's greedy decode of ``context`` begins with ``continuation``
    (lm-eval's ``is_greedy``; see :func:`greedy_prefixes`)."""
    return greedy_prefixes(ensemble, context, [continuation])[0]
