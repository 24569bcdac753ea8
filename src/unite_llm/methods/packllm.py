"""PackLLM-sim: per-prompt member weights from perplexity (Mavromatis et al. 2024,
"Pack of LLMs: Model Fusion at Test-Time via Perplexity Optimization"), used as UniTE weights.

PackLLM's "sim" variant weighs each member by how well it understands *this* prompt::

    log PPL_i = - mean_t log p_i(x_t | x_<t)        over the prompt's tokens (member's own)
    w_i       = softmax_i(- log PPL_i / tau)

and fuses with those weights.  Here the fusion is UniTE's step (PackLLM's own fusion
needs shared tokens; UniTE is what unites different tokenizers in this engine), so the
comparison isolates the weighting.  ``per="byte"`` normalises by the prompt's bytes
instead of tokens (bits per byte), which does not favour a tokenizer that cuts the text
into many easy pieces; ``per="token"`` (default) is the paper's.

The weights are computed in the ``prepare`` hook, once per generation (per row of a
batch), with each member's log-likelihoods (:func:`~unite_llm.members.base.token_logprobs`:
one batched pass on llama.cpp, whose KV cache is then reused by prefill), and returned to
the decode loop, which steps that generation with them instead of the ensemble's.  The
last ones are also kept in ``last_weights`` and logged.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InvalidConfigError
from ..mathops import softmax
from ..members.base import token_logprobs
from .unite import UniTE

if TYPE_CHECKING:
    from ..members.base import Member
    from ..sync import TokenTrack

log = logging.getLogger("unite_llm")


def packllm_weights(log_ppl: Sequence[float], tau: float = 1.0) -> np.ndarray:
    """``softmax(-log_ppl / tau)``: lower perplexity, higher weight."""
    if tau <= 0:
        raise InvalidConfigError(f"tau must be > 0, got {tau}")
    return softmax(-np.asarray(log_ppl, dtype=np.float64) / tau)


def prompt_log_ppl(logprobs: np.ndarray, n_bytes: int, per: str = "token") -> float:
    """Mean negative log-likelihood per token (or per byte) of a scored prompt."""
    if logprobs.size == 0:
        return 0.0
    denom = logprobs.size if per == "token" else max(n_bytes, 1)
    return float(-logprobs.sum() / denom)


class PackLLM(UniTE):
    """UniTE with per-prompt PackLLM-sim weights."""

    name = "packllm"
    needs_prepare = True

    def __init__(self, k: int = 10, tau: float = 1.0, per: str = "token") -> None:
        super().__init__(k=k)
        if per not in ("token", "byte"):
            raise InvalidConfigError(f"per must be 'token' or 'byte', got {per!r}")
        packllm_weights([0.0], tau)  # validates tau
        self.tau = tau
        self.per = per
        self.last_weights: np.ndarray | None = None
        self.last_log_ppl: list[float] = []

    def prepare(self, members: Sequence[Member], tracks: Sequence[TokenTrack], primary: int | None) -> np.ndarray:
        """Score the prompt with every member; returns this generation's weights."""
        log_ppl = []
        for member, track in zip(members, tracks):
            tokens = track.tokens
            lp = token_logprobs(member, tokens, 1) if len(tokens) > 1 else np.zeros(0)
            n_bytes = len(member.vocab.decode(tokens[1:]))
            log_ppl.append(prompt_log_ppl(lp, n_bytes, self.per))
        self.last_log_ppl = log_ppl
        self.last_weights = packllm_weights(log_ppl, self.tau)
        log.info("packllm: log-ppl %s -> weights %s", np.round(log_ppl, 3).tolist(), np.round(self.last_weights, 3).tolist())
        return self.last_weights
