"""A GGUF model run by llama.cpp (through llama-cpp-python).

KV-cache rollback uses llama-cpp-python's own mechanism: ``Llama.eval`` first removes
the cache from position ``n_tokens`` on, so setting ``n_tokens`` to the common prefix
and evaluating the new suffix is a rollback.  ``logits_all`` stays off, so the
next-token logits are read straight from llama.cpp's buffer (no copy of 262k floats).

History-independent prefix caching: llama.cpp's kernels round differently with the
number of tokens in a batch (and a token's place in it), so a prefix reused from another
request, computed inside other batches, can give logits that differ in the last bits from
a cold evaluation and flip a greedy near-tie.  A generation's prompt is therefore always
evaluated by the same plan, a function of the prompt alone: chunks of
:data:`PREFILL_CHUNK` tokens aligned to absolute positions, then the remainder, then the
last token on its own.  Across generations only whole aligned chunks computed by that plan
are reused (a watermark tracks how far they reach); tokens of a remainder or of decode
steps are recomputed.  Within a generation, decode steps reuse everything, which is a
function of the prompt too.

Many sequences at once (``n_seq > 1``, llama.cpp's ``n_seq_max`` as in ``llama-server
--parallel``): :meth:`LlamaCppMember.next_logits_batch` keeps one KV sequence per batch row in a
second llama.cpp context (allocated on first use, ``n_ctx`` cells per sequence, shared prefixes
stored once) and decodes every row's new tokens in one ``llama_decode``.  Each row keeps its own
token track: a row whose tail changed (re-tokenisation) rolls back only its own sequence
(``llama_memory_seq_rm``), and a row reuses its own prefix from the previous step.  Batched
kernels round differently from a single sequence's, so a row's next-token distribution differs
from ``next_logits``'s on the same context (a total variation of ~0.04 on these Q4_K models, as
much as chunked vs one-decode prompt evaluation of a single sequence) and depends on the other
rows of the batch; where outputs must be a function of the prompt alone, keep ``n_seq = 1``
(the default: rows then decode one by one through ``next_logits``).  The bookkeeping itself is
exact: a row whose tokens are decoded in the single sequence's groups, with no other sequence's
cells in the cache, gets bit-identical logits (tested).  What is left has two causes of about the
same size, measured by ``bench/bench_batch_invariance.py``: other sequences' cells interleaved with
a row's in the unified cache, and kernels that change with the number of tokens in a decode
(repacked Q4_K weights go through a gemm from 4 tokens on).  One stream per sequence
(``kv_unified`` off) removes the first but not the second, and would stop a joining prompt from
sharing the other rows' decode, so the cache stays unified.
"""

from __future__ import annotations

import ctypes
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InvalidConfigError, ModelFileError
from ..mathops import logsumexp_rows
from ..models import resolve_gguf
from ..vocab import ByteVocab
from .base import MemberBase, check_context, common_prefix

if TYPE_CHECKING:
    import llama_cpp

DEFAULT_N_CTX = 4096
_SCORE_CHUNK = 32  # positions scored per llama.cpp batch (bounds the logits buffer)
PREFILL_CHUNK = 32
"""Tokens per aligned prompt chunk: the granularity at which a prefix is reused across generations."""


def prompt_plan(n: int) -> list[int]:
    """Where the prompt plan cuts a prompt of ``n`` tokens: the end of each ``llama_decode``, in order.

    Aligned chunks ``[jC, (j+1)C)`` up to the last boundary before the final token, the
    remainder in one decode, the final token alone (see the module docstring).
    """
    end = (n - 1) // PREFILL_CHUNK * PREFILL_CHUNK
    return [*range(PREFILL_CHUNK, end + 1, PREFILL_CHUNK), *([n - 1] if n - 1 > end else []), n]


def fill_batch(batch: Any, items: Sequence[tuple[int, int, int, bool]]) -> None:
    """Write ``(sequence, position, token, wants logits)`` items into a ``llama_batch``, one sequence id each."""
    batch.n_tokens = len(items)
    for j, (seq, pos, tok, logits) in enumerate(items):
        batch.token[j] = tok
        batch.pos[j] = pos
        batch.n_seq_id[j] = 1
        batch.seq_id[j][0] = seq
        batch.logits[j] = logits


_log_callback = None


def _quiet_llama_log() -> None:
    """Pass only llama.cpp's errors on (its info lines are noise on a user's terminal)."""
    global _log_callback
    import llama_cpp

    if _log_callback is None:

        @llama_cpp.llama_log_callback
        def callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
            if level == 4:  # GGML_LOG_LEVEL_ERROR (0 none, 1 debug, 2 info, 3 warn)
                logging.getLogger("llama_cpp").error(text.decode("utf-8", errors="replace").rstrip())

        _log_callback = callback
    llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))


def _piece(vocab_ptr: object, tid: int, buf: ctypes.Array) -> bytes:
    import llama_cpp

    n = llama_cpp.llama_token_to_piece(vocab_ptr, tid, buf, len(buf), 0, False)
    if n < 0:  # buffer too small: retry with the size llama.cpp asked for
        big = ctypes.create_string_buffer(-n)
        n = llama_cpp.llama_token_to_piece(vocab_ptr, tid, big, len(big), 0, False)
        return big.raw[:n]
    return buf.raw[:n]


def byte_vocab(llm: llama_cpp.Llama) -> ByteVocab:
    """The :class:`ByteVocab` of a loaded ``llama_cpp.Llama`` (also a ``vocab_only`` one,
    which is how a remote member gets its tokenizer from a local GGUF file)."""
    import llama_cpp

    vocab_ptr = llama_cpp.llama_model_get_vocab(llm.model)
    n_vocab = llm.n_vocab()
    buf = ctypes.create_string_buffer(256)
    pieces = [_piece(vocab_ptr, tid, buf) for tid in range(n_vocab)]
    # End-of-generation tokens are control tokens (no bytes); checking those is enough.
    eog = {t for t, p in enumerate(pieces) if not p and llama_cpp.llama_vocab_is_eog(vocab_ptr, t)}
    eog |= {t for t in (llm.token_eos(),) if 0 <= t < n_vocab}
    return ByteVocab(pieces, frozenset(eog))


def check_options(n_ctx: int | None = None, n_threads: int | None = None) -> None:
    """Refuse context sizes and thread counts llama.cpp would crash on or misread.

    ``n_ctx=0`` means the model's trained context, as in llama.cpp; a negative value (or
    one past 32 bits) would wrap to another unsigned size inside llama.cpp.
    """
    if n_ctx is not None and (isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or not 0 <= n_ctx < 2**31):
        raise InvalidConfigError(f"n_ctx must be an integer >= 0 (0: the model's trained context), got {n_ctx!r}")
    if n_threads is not None and (isinstance(n_threads, bool) or not isinstance(n_threads, int) or n_threads < 0):
        raise InvalidConfigError(f"n_threads must be an integer >= 1 (0 or unset: all cores), got {n_threads!r}")


def open_llama(path: Path, **params: Any) -> llama_cpp.Llama:
    """``llama_cpp.Llama(model_path=path, ...)``, with a damaged file named in a :class:`ModelFileError`.

    llama.cpp answers a text file, an empty file and a truncated GGUF alike with a bare
    ``ValueError: Failed to load model from file``; the magic bytes tell the first two
    apart before llama.cpp runs.
    """
    import llama_cpp

    with open(path, "rb") as f:
        head = f.read(4)
    size = path.stat().st_size
    if not head:
        raise ModelFileError(f"{path} is empty (0 bytes), not a GGUF model")
    if head != b"GGUF":
        raise ModelFileError(f"{path} is not a GGUF model file (it starts with {head!r}, not b'GGUF')")
    try:
        return llama_cpp.Llama(model_path=str(path), **params)
    except ValueError as err:
        if "llama_context" in str(err):  # the model loaded; its KV cache could not be allocated
            raise InvalidConfigError(
                f"llama.cpp cannot create a context of {params.get('n_ctx')} tokens for {path} "
                f"(too large for this machine's memory?) ({err})"
            ) from None
        raise ModelFileError(
            f"llama.cpp cannot load {path} ({size:,} bytes): truncated or damaged, or an architecture "
            f"this llama.cpp does not support ({err})"
        ) from None


class LlamaCppMember(MemberBase):
    """An ensemble member backed by ``llama_cpp.Llama``.

    ``spec`` is a path to a ``.gguf`` file or an alias from :mod:`unite_llm.models`.
    """

    abilities = frozenset({"reset", "start_sequence", "score", "next_logits_batch", "token_embeddings"})
    cheap_joins = True
    """A row joins a running batch on a sequence of its own: the other rows are not re-evaluated."""

    def __init__(
        self,
        spec: str,
        *,
        name: str | None = None,
        n_ctx: int = DEFAULT_N_CTX,
        n_threads: int | None = None,
        n_batch: int = 512,
        n_gpu_layers: int = 0,
        seed: int = 0,
        n_seq: int = 1,
    ) -> None:
        import llama_cpp

        check_options(n_ctx, n_threads)
        if isinstance(n_seq, bool) or not isinstance(n_seq, int) or not 1 <= n_seq <= llama_cpp.llama_max_parallel_sequences():
            raise InvalidConfigError(
                f"n_seq must be an integer in [1, {llama_cpp.llama_max_parallel_sequences()}] "
                f"(sequences decoded together), got {n_seq!r}"
            )
        _quiet_llama_log()
        path = resolve_gguf(spec)
        self.path = Path(path)
        self.name = name or (spec if not spec.endswith(".gguf") else self.path.stem)
        self.llm = open_llama(
            self.path,
            n_ctx=n_ctx,
            n_threads=n_threads or os.cpu_count() or 1,
            # Multi-token suffixes use the batch thread count: keep it in the member's budget.
            n_threads_batch=n_threads or os.cpu_count() or 1,
            n_batch=n_batch,
            n_gpu_layers=n_gpu_layers,
            seed=seed,
            logits_all=False,
            verbose=False,
        )
        # llama.cpp may round the context up; llama-cpp-python's buffers keep the size asked for.
        self.n_ctx = min(n_ctx, self.llm.n_ctx()) if n_ctx else self.llm.n_ctx()
        self.vocab = byte_vocab(self.llm)
        self._vocab_ptr = llama_cpp.llama_model_get_vocab(self.llm.model)
        n_vocab = len(self.vocab)
        meta = self.llm.metadata
        self.architecture = meta.get("general.architecture", "")
        self.chat_template: str | None = meta.get("tokenizer.chat_template") or None
        self.bos_text = self._token_text(self.llm.token_bos())
        self.eos_text = self._token_text(self.llm.token_eos())
        self.n_evaluated = 0
        self._context: list[int] = []
        self._aligned = 0  # positions [0, _aligned) hold whole aligned chunks of a prompt plan
        self._fresh = True  # the next next_logits call starts a generation
        self._scored_tokens: list[int] = []  # the last sequence score() saw, and its
        self._scored = np.zeros(0)  # per-position log-probabilities (NaN where not asked)
        self._n_vocab = n_vocab
        self.max_rows: int = n_seq
        """Rows :meth:`next_logits_batch` takes at once (1: batches decode row by row)."""
        self._seqs: _Sequences | None = None
        self._closed = False

    def _check_open(self) -> None:
        """Refuse use after :meth:`close`: llama.cpp's memory is freed, and reading it kills the process."""
        if self._closed:
            raise RuntimeError(f"{self.name} is closed (its ensemble or close() freed it): load the model again")

    def _token_text(self, tid: int) -> str:
        if tid < 0:
            return ""
        return self.llm.detokenize([tid], special=True).decode("utf-8", errors="replace")

    def tokenize(self, text: bytes, *, add_bos: bool = False, special: bool = False) -> list[int]:
        # llama.cpp directly, with a buffer sized to the text: llama-cpp-python allocates
        # n_ctx_train tokens per call (32k for Gemma), which costs more than tokenizing
        # the few bytes of a tail window each step.
        import llama_cpp

        self._check_open()
        n_max = len(text) + 2
        buf = (llama_cpp.llama_token * n_max)()
        n = llama_cpp.llama_tokenize(self._vocab_ptr, text, len(text), buf, n_max, add_bos, special)
        if n < 0:
            n_max = -n
            buf = (llama_cpp.llama_token * n_max)()
            n = llama_cpp.llama_tokenize(self._vocab_ptr, text, len(text), buf, n_max, add_bos, special)
        if n < 0:
            raise RuntimeError(f"llama.cpp failed to tokenize {len(text)} bytes")
        return buf[:n]

    def next_logits(self, context: Sequence[int]) -> np.ndarray:
        import llama_cpp

        self._check_open()
        check_context(self, len(context))
        if not context:
            raise ValueError("next_logits needs at least one token (BOS or text)")
        n = len(context)
        if self._fresh:
            self._prefill(context)
        else:
            # A decode step of the same generation: keep everything that still matches.
            keep = min(common_prefix(self._context, context), n - 1)  # >= 1 token for fresh logits
            self._aligned = min(self._aligned, keep - keep % PREFILL_CHUNK)
            self.llm.n_tokens = keep
            todo = list(context[keep:])
            # The last token is always evaluated on its own, as in the prompt plan.
            if len(todo) > 1:
                self.llm.eval(todo[:-1])
            self.llm.eval(todo[-1:])
            self.n_evaluated += len(todo)
        self._context = list(context)
        ptr = llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self._n_vocab,))

    def next_logits_batch(self, contexts: Sequence[Sequence[int]], rows: Sequence[int] | None = None) -> np.ndarray:
        """Next-token scores ``[len(contexts), vocab]`` for many contexts, in one ``llama_decode``.

        ``rows`` names each context (default ``0..B-1``, see
        :class:`~unite_llm.members.base.BatchMember`): a name continues its own KV sequence from
        the previous call (only the new suffix is evaluated; a changed tail rolls that sequence
        back), names not given again are dropped, and new names join in a free sequence.  At most
        ``n_seq`` rows at once.  A batch larger than ``n_batch`` tokens (several prompts joining)
        is split into several decodes; each row's logits are read where its last token is.
        """
        self._check_open()
        rows = list(range(len(contexts))) if rows is None else list(rows)
        if len(rows) != len(contexts) or len(set(rows)) != len(rows):
            raise ValueError("rows must name each context once")
        if len(rows) > self.max_rows:
            raise ValueError(f"{self.name}: {len(rows)} rows, but n_seq={self.max_rows} sequences")
        for ctx in contexts:
            if not ctx:
                raise ValueError("next_logits_batch needs at least one token (BOS or text) per row")
            check_context(self, len(ctx))
        if self._seqs is None:
            self._seqs = _Sequences(self.llm, self.max_rows, self.n_ctx)
        out, n = self._seqs.decode(rows, contexts, self._n_vocab)
        self.n_evaluated += n
        return out

    def start_sequence(self) -> None:
        """The next :meth:`next_logits` starts a new generation: evaluate it by the prompt plan.

        Called by the ensemble before each generation (see :func:`unite_llm.members.base.start_sequence`).
        """
        self._check_open()
        self._fresh = True

    def _prefill(self, context: Sequence[int]) -> None:
        """Make the cache hold ``context`` by the prompt plan (see the module docstring).

        The plan (:func:`prompt_plan`) depends on ``context`` alone.  Chunks already in the cache
        from an earlier plan with the same tokens are kept.
        """
        self._fresh = False
        n, c = len(context), PREFILL_CHUNK
        end = (n - 1) // c * c  # the aligned chunks stop here
        keep = min(common_prefix(self._context, context), self._aligned, end)
        keep -= keep % c
        self.llm.n_tokens = keep
        start = keep
        for stop in prompt_plan(n):
            if stop > keep:  # one llama_decode per piece while c <= n_batch
                self.llm.eval(context[start:stop])
                start = stop
        self._aligned = end
        self.n_evaluated += n - keep

    def score(self, tokens: Sequence[int], start: int = 1, top: int = 0) -> Any:
        """Log-probability of each of ``tokens[start:]`` given the tokens before it.

        With ``top > 0`` also each position's ``top`` most probable tokens:
        ``(logprobs, top_ids, top_logprobs)``, the last two ``[len - start, top]`` arrays
        best first (the echoed prompt of the server's ``/v1/completions``); every position
        is then computed afresh, as the reused log-probabilities carry no alternatives.

        One pass with logits requested at every position, in chunks of ``_SCORE_CHUNK``
        so the output buffer stays small (32 x 262k floats for Gemma) instead of the
        ``n_ctx x n_vocab`` array that ``logits_all=True`` would keep for the model's
        lifetime.  The KV cache is reused and left holding ``tokens``, so a following
        ``next_logits(tokens)`` evaluates nothing new but the last token; log-probabilities
        of a shared prefix scored by the previous call are reused, not recomputed.
        """
        import llama_cpp

        self._check_open()
        tokens = list(tokens)
        if not 1 <= start <= len(tokens):
            raise ValueError(f"start must be in [1, {len(tokens)}], got {start}")
        check_context(self, len(tokens))
        # Log-probabilities scored before stay valid for every position whose preceding
        # tokens are unchanged (an evaluation's prompts share their few-shot block), so
        # scoring resumes at the first unknown target, from the logits of the position
        # before it.
        n = len(tokens)
        same = min(common_prefix(self._scored_tokens, tokens), len(self._scored))
        lp_all = np.full(n, np.nan)
        lp_all[:same] = self._scored[:same]
        resume = start
        while not top and resume < same and not np.isnan(lp_all[resume]):
            resume += 1
        top_ids = np.zeros((n, top), dtype=np.int64)
        top_lps = np.full((n, top), -np.inf)
        keep = min(common_prefix(self._context, tokens), resume - 1)
        self.llm._ctx.kv_cache_seq_rm(-1, keep, -1)
        self.llm.n_tokens = keep
        chunk = min(_SCORE_CHUNK, self.llm.n_batch)
        # Chunks end on the prompt plan's aligned boundaries, so that from an aligned start the
        # cache holds the same whole chunks a generation's prompt plan computes (reusable by it).
        on_plan = chunk == PREFILL_CHUNK and keep % chunk == 0 and keep <= self._aligned
        pos = keep
        while pos < n - 1:  # the logits at positions pos .. predict tokens pos+1 ..
            batch = tokens[pos : min((pos // chunk + 1) * chunk, n - 1)]
            self.llm._batch.set_batch(batch=batch, n_past=pos, logits_all=True)
            self.llm._ctx.decode(self.llm._batch)
            self.n_evaluated += len(batch)
            # One log-softmax over the chunk's rows (llama.cpp keeps them contiguous).
            rows = np.ctypeslib.as_array(llama_cpp.llama_get_logits(self.llm.ctx), shape=(len(batch), self._n_vocab))
            lse = logsumexp_rows(rows)
            targets = np.arange(pos + 1, pos + 1 + len(batch))
            lp_all[targets] = rows[np.arange(len(batch)), np.asarray(tokens)[targets]] - lse
            if top:
                k = min(top, self._n_vocab)
                best = np.argpartition(-rows, k - 1, axis=1)[:, :k]
                vals = np.take_along_axis(rows, best, axis=1)
                order = np.argsort(-vals, axis=1, kind="stable")
                top_ids[targets, :k] = np.take_along_axis(best, order, axis=1)
                top_lps[targets, :k] = np.take_along_axis(vals, order, axis=1) - lse[:, None]
            pos += len(batch)
        self.llm.n_tokens = pos
        self.llm.input_ids[:pos] = tokens[:pos]
        self._context = tokens[:pos]
        self._aligned = (n - 1) // chunk * chunk if on_plan else min(self._aligned, keep - keep % PREFILL_CHUNK)
        self._scored_tokens, self._scored = tokens, lp_all
        if top:
            return lp_all[start:].copy(), top_ids[start:], top_lps[start:]
        return lp_all[start:].copy()

    def token_embeddings(self) -> np.ndarray:
        """The input token-embedding matrix ``[n_vocab, d]`` (float32), dequantized from the GGUF.

        DeePEn builds its relative representations from these.  Read with the ``gguf``
        package (llama.cpp's own reader), not through the running model.
        """
        try:
            from gguf import GGUFReader
            from gguf.quants import dequantize
        except ImportError:
            raise InvalidConfigError(
                "reading token embeddings needs the gguf package: pip install 'unite-llm[baselines]'"
            ) from None
        reader = GGUFReader(str(self.path))
        for tensor in reader.tensors:
            if tensor.name == "token_embd.weight":
                emb = np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
                return emb.reshape(self._n_vocab, -1)
        raise InvalidConfigError(f"{self.path} has no token_embd.weight tensor")

    def set_threads(self, n_threads: int) -> None:
        """Threads for the next decodes (llama.cpp changes them between calls, at no cost)."""
        import llama_cpp

        check_options(n_threads=n_threads)
        llama_cpp.llama_set_n_threads(self.llm.ctx, n_threads, n_threads)
        if self._seqs is not None:
            llama_cpp.llama_set_n_threads(self._seqs.ctx.ctx, n_threads, n_threads)

    def decode_ms(self, n_threads: int, reps: int = 3) -> float:
        """Median milliseconds of one single-token decode with ``n_threads`` (the thread plan's
        measurement, :func:`unite_llm.thread_plan.plan_threads`); forgets the KV cache."""
        self.set_threads(n_threads)
        tokens = self.tokenize(b"The quick brown fox jumps over the lazy dog", add_bos=True)
        self.llm.reset()
        self.llm.eval(tokens[:-1])
        times = []
        for _ in range(reps + 1):  # the first one warms the threads up
            self.llm.n_tokens = len(tokens) - 1
            t0 = time.perf_counter()
            self.llm.eval(tokens[-1:])
            times.append(time.perf_counter() - t0)
        self.reset()
        return 1000 * float(np.median(times[1:]))

    def reset(self) -> None:
        """Forget the KV cache: the next context is evaluated from scratch."""
        self._check_open()
        self.llm.reset()
        self._context = []
        self._aligned = 0
        self._fresh = True
        self._scored_tokens, self._scored = [], np.zeros(0)
        if self._seqs is not None:
            self._seqs.clear()

    def close(self) -> None:
        """Free llama.cpp's memory; closing twice is harmless, any other use after it raises ``RuntimeError``."""
        if self._closed:
            return
        self._closed = True
        if self._seqs is not None:
            self._seqs.close()
            self._seqs = None
        self.llm.close()

    def __repr__(self) -> str:
        return f"LlamaCppMember({self.name!r}, vocab={len(self.vocab)}, n_ctx={self.n_ctx})"


class _Sequences:
    """The batch rows' KV sequences: a llama.cpp context with ``n_seq`` sequences, one per row.

    The cache is unified (``kv_unified``, ``n_ctx`` cells per sequence in one pool): a row that
    joins copies the longest prefix it shares with any sequence in the cache
    (``llama_memory_seq_cp``, which shares the cells, no copy), so prompts with a common
    few-shot block evaluate it once.  A finished row's sequence keeps its cells until another
    row takes it, so the next batch can reuse them too.  Attention stays per sequence (llama.cpp
    masks the other sequences' cells).
    """

    def __init__(self, llm: llama_cpp.Llama, n_seq: int, n_ctx: int) -> None:
        import llama_cpp
        from llama_cpp import _internals

        params = llama_cpp.llama_context_params.from_buffer_copy(llm.context_params)
        params.n_seq_max = n_seq
        params.n_ctx = n_ctx * n_seq
        params.kv_unified = True
        self.ctx = _internals.LlamaContext(model=llm._model, params=params, verbose=False)
        self.n_batch = int(params.n_batch)
        self.batch = _internals.LlamaBatch(n_tokens=self.n_batch, embd=0, n_seq_max=1, verbose=False)
        self.free = set(range(n_seq))  # sequence ids no row holds
        self.slot: dict[int, int] = {}  # row name -> sequence id
        self.tokens: dict[int, list[int]] = {s: [] for s in range(n_seq)}  # sequence id -> the tokens its cells hold

    def _rm(self, seq: int, start: int) -> None:
        import llama_cpp

        llama_cpp.llama_memory_seq_rm(self.ctx.memory, seq, start, -1)
        del self.tokens[seq][start:]

    def _join(self, ctx: Sequence[int]) -> int:
        """A free sequence for a new row, holding the longest prefix of ``ctx`` the cache has."""
        import llama_cpp

        def shared(s: int) -> int:
            return common_prefix(self.tokens[s], ctx)

        seq = max(sorted(self.free), key=shared)  # its own old cells first (ties: the lowest id)
        donor = max(sorted(self.tokens), key=shared)
        keep = min(shared(seq), len(ctx) - 1)
        self._rm(seq, keep)
        if shared(donor) > keep + 1:  # worth a copy: another sequence holds a longer prefix
            keep = min(shared(donor), len(ctx) - 1)
            self._rm(seq, 0)
            llama_cpp.llama_memory_seq_cp(self.ctx.memory, donor, seq, 0, keep)
            self.tokens[seq] = list(ctx[:keep])
        self.free.discard(seq)
        return seq

    def decode(self, rows: list[int], contexts: Sequence[Sequence[int]], n_vocab: int) -> tuple[np.ndarray, int]:
        import llama_cpp

        named = set(rows)
        for name in [r for r in self.slot if r not in named]:  # finished rows free their sequence
            self.free.add(self.slot.pop(name))
        last = {b: len(ctx) - 1 for b, ctx in enumerate(contexts)}
        out = np.empty((len(rows), n_vocab), dtype=np.float32)
        todo: list[tuple[int, int, int, int]] = []  # (row index, sequence, position, token)
        pending: dict[int, Sequence[int]] = {}  # sequence -> the context its queued tokens complete
        evaluated = 0

        def flush() -> None:
            batch = self.batch.batch
            for start in range(0, len(todo), self.n_batch):
                part = todo[start : start + self.n_batch]
                fill_batch(batch, [(seq, pos, tok, pos == last[b]) for b, seq, pos, tok in part])
                code = llama_cpp.llama_decode(self.ctx.ctx, batch)
                if code != 0:
                    raise RuntimeError(f"llama_decode of {len(part)} tokens over {len(rows)} sequences returned {code}")
                for j, (b, _, pos, _) in enumerate(part):
                    if pos == last[b]:
                        out[b] = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self.ctx.ctx, j), shape=(n_vocab,))
            for seq, ctx in pending.items():
                self.tokens[seq] = list(ctx)
            todo.clear()
            pending.clear()

        for b, (name, ctx) in enumerate(zip(rows, contexts)):
            if name not in self.slot:
                # A row queued in this call shares more with it than any cells do: decode that
                # row first (one more llama_decode), so that this one can copy its prefix.
                queued = max((common_prefix(c, ctx) for c in pending.values()), default=0)
                if queued > max(common_prefix(t, ctx) for t in self.tokens.values()) + 1:
                    flush()
                self.slot[name] = self._join(ctx)
            seq = self.slot[name]
            keep = min(common_prefix(self.tokens[seq], ctx), len(ctx) - 1)  # >= 1 token for fresh logits
            self._rm(seq, keep)
            todo += [(b, seq, pos, ctx[pos]) for pos in range(keep, len(ctx))]
            evaluated += len(ctx) - keep
            pending[seq] = ctx
        flush()
        return out, evaluated

    def clear(self) -> None:
        import llama_cpp

        llama_cpp.llama_memory_clear(self.ctx.memory, True)
        self.free = set(self.tokens)
        self.slot = {}
        self.tokens = {s: [] for s in self.tokens}

    def close(self) -> None:
        self.batch.close()
        self.ctx.close()
