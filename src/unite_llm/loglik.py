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

:func:`prompt_logprobs` is the server's ``echo``: per-token log-probabilities of a prompt in
one member's tokens, for the same mixture read as a joint distribution over texts (its sums
over a continuation are the mixture's Bayesian conditional; see the function and
``docs/lm_eval.md``).
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
from .mathops import logsumexp
from .members.base import Member, common_prefix, token_logprobs, token_top_logprobs
from .methods.gate import Gate
from .methods.weighting import WeightRule, apply_rules
from .prompts import as_utf8, render_chat, text_track
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


def added_bos(member: Member) -> int | None:
    """The BOS token the member's tokenizer puts before a new text, if it puts one."""
    with_bos = member.tokenize(b"a", add_bos=True, special=True)
    return with_bos[0] if len(with_bos) > len(member.tokenize(b"a", special=True)) else None


def context_track(member: Member, context: Text) -> TokenTrack:
    """The member's token track for a raw-text ``context``: :func:`~unite_llm.prompts.text_track`
    (the core of :func:`~unite_llm.prompts.start_track`), without start_track's empty-prompt
    and context-length checks (the context is cut to fit later), with no BOS for an empty
    context, and open to a partial UTF-8 tail."""
    data = _bytes(context)
    cut = len(data) - incomplete_utf8_tail(data)
    head, tail = as_utf8(data[:cut], "context"), data[cut:]
    track = text_track(member, head) if head else TokenTrack(member.vocab, member.tokenize, [], b"")
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


def mixture(logprobs: Sequence[float] | np.ndarray, weights: Sequence[float] | np.ndarray) -> float:
    """``log sum_i w_i exp(ll_i)`` with normalised weights; exactly ``ll_0`` for one member."""
    lls = np.asarray(logprobs, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if len(lls) == 1:
        return float(lls[0])
    return float(logsumexp(np.log(w) + lls))


def choice_mixture(
    logprobs: Sequence[Sequence[float]] | np.ndarray,
    weights: Sequence[float] | np.ndarray,
    *,
    rules: Sequence[WeightRule] = (),
    primary: int | None = None,
    gate: Gate | None = None,
) -> np.ndarray:
    """The ensemble's log-likelihoods of one question's choices, ``logprobs[member][choice]``:
    UniTE's rule applied to the choices instead of a union of tokens.

    Each member is renormalised over the choices (``q_i = softmax(ll_i)``: its answer, given
    that the answer is one of them), so a member's absolute likelihood of the texts (a base
    model's fluency) no longer outvotes another's preference; the gate reads the primary's
    ``q``, and where it stays closed the primary's own log-likelihoods are returned; otherwise
    the weighting rules mix the ``q_i``.  The result is ``log sum_i w_i q_i + sum_i w_i log Z_i``:
    the constant (``Z_i`` a member's total over the choices) makes a one-member ensemble give
    exactly its own log-likelihoods, and keeps per-character normalisation (``acc_norm``)
    meaningful.
    """
    lls = np.asarray(logprobs, dtype=np.float64)
    if lls.ndim != 2 or lls.shape[1] == 0:
        raise ValueError(f"choice_mixture needs [members, choices] log-likelihoods, got shape {lls.shape}")
    if lls.shape[0] == 1:
        return lls[0].copy()
    if gate is not None and primary is not None and not gate.is_open(lls[primary], lls.shape[1])[0]:
        return lls[primary].copy()
    logz = logsumexp(lls, axis=1)
    q = np.exp(lls - logz[:, None])
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    with np.errstate(divide="ignore"):
        return np.log(apply_rules(rules, w, q, primary)) + float(w @ logz)


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


# -- prompt log-probabilities (the server's echo) ------------------------------------------


def reference_member(ensemble: Ensemble) -> Member:
    """The member whose tokenizer the server's ``/tokenize`` and echoed prompts use: the primary,
    else the first member."""
    return ensemble.members[ensemble.primary if ensemble.primary is not None else 0]


@dataclass
class PromptLogprobs:
    """Per-token log-probabilities of a prompt in the reference member's tokens (OpenAI's echo)."""

    ids: list[int]
    pieces: list[bytes]
    logprobs: list[float | None]
    """None for the first token, which nothing precedes (OpenAI's convention)."""
    top: list[dict[int, float]] | None
    """Each position's most probable reference tokens (one-member ensembles), else None."""


def _byte_ends(pieces: Sequence[bytes]) -> np.ndarray:
    return np.cumsum([len(x) for x in pieces], dtype=np.int64) if pieces else np.zeros(0, dtype=np.int64)


def prompt_logprobs(ensemble: Ensemble, ids: Sequence[int], n_top: int = 0) -> PromptLogprobs:
    """Each prompt token's log-probability under the ensemble, as a text distribution.

    The ensemble is the mixture of its members as distributions over texts (the model that
    :func:`ensemble_loglik` scores with), and a prompt's tokens are read in the reference
    member's tokenization (``ids``).  Member ``i`` scores the prompt's bytes once, in its own
    tokens; ``L_i(t)`` is its log-probability of the tokens that end within the first ``t + 1``
    reference tokens (a member token that straddles a boundary counts where it ends), for the
    reference member exactly its own token log-probabilities.  The mixture's prefix
    log-probability ``L(t) = log sum_i w_i exp L_i(t)`` telescopes into per-token values
    ``L(t) - L(t - 1)``.  So the sum over a continuation's tokens is the mixture's exact
    conditional log-probability of the continuation given the prompt before it: each member
    weighted by ``w_i`` times its probability of that earlier text (Bayes), where the
    in-process :func:`ensemble_loglik` conditions on a context with the prior weights ``w_i``.
    A distribution has one joint, and an echo cannot know where the caller's context ends;
    for one member both are its own log-likelihood.

    ``n_top`` alternatives per position are the member's own (one-member ensembles only: the
    ensemble's next-token distribution exists on a step's union, and a prompt is not decoded).
    """
    ref = reference_member(ensemble)
    ids = [int(t) for t in ids]
    pieces = [ref.vocab.pieces[t] for t in ids]
    n = len(ids)
    if n == 0:
        return PromptLogprobs([], [], [], None)
    ends = _byte_ends(pieces)
    text = b"".join(pieces)
    single = len(ensemble.members) == 1
    top: list[dict[int, float]] | None = None

    def steps_of(member: Member) -> np.ndarray:
        """``D_i(t)``: member's log-probability of its tokens ending within reference token ``t`` (t >= 1)."""
        out = np.zeros(n)
        if member is ref:
            # Conditioned as the ensemble prompts the member: on its BOS if its tokenizer adds one.
            bos = added_bos(ref)
            head = [bos] if bos is not None and ids[0] != bos else []
            seq = head + ids
            first = len(head) + 1  # score ids[1:]
            if single and n_top:
                nonlocal top
                lps, tids, tlps = token_top_logprobs(member, seq, first, n_top)
                rows = zip(tids, tlps)
                top = [{}] + [{int(a): float(b) for a, b in zip(r_ids, r_lps) if b > -math.inf} for r_ids, r_lps in rows]
            else:
                lps = token_logprobs(member, seq, first) if n > 1 else np.zeros(0)
            out[1:] = lps
            return out
        toks = list(context_track(member, text).tokens)
        member_ends = _byte_ends([member.vocab.pieces[t] for t in toks])
        if not toks or member_ends[0] > ends[0]:  # its first token reaches past the first reference token
            toks, member_ends = [prefix_token(member), *toks], np.concatenate([[0], member_ends])
        if len(toks) > member.n_ctx:
            raise ContextLengthError(
                f"{member.name}: the prompt is {len(toks)} tokens, more than its {member.n_ctx}-token window"
            )
        lps = token_logprobs(member, toks, 1) if len(toks) > 1 else np.zeros(0)
        where = np.searchsorted(ends, member_ends[1:], side="left")  # the reference token each member token ends in
        keep = (where >= 1) & (where < n)
        np.add.at(out, where[keep], lps[keep])
        return out

    with ensemble.exclusive():
        steps = np.stack([steps_of(m) for m in ensemble.members])  # members x positions
    cumulative = np.cumsum(steps, axis=1)
    prefix = np.array([mixture(cumulative[:, t], ensemble.weights) for t in range(n)])
    logprobs: list[float | None] = [None] + [float(prefix[t] - prefix[t - 1]) for t in range(1, n)]
    if single:  # exactly the member's own values, not a difference of sums
        logprobs = [None] + [float(x) for x in steps[0, 1:]]
    return PromptLogprobs(ids, pieces, logprobs, top)
