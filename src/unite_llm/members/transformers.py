"""A Hugging Face ``AutoModelForCausalLM`` as an ensemble member (the GPU path).

Specs: ``hf:<hub-id-or-directory>`` or ``hf:<path>.gguf`` (a GGUF file dequantised by
transformers' ``gguf_file=`` loader; the aliases of :mod:`unite_llm.models` work too,
e.g. ``hf:smollm2-135m-instruct``).

Three things make it a member rather than a ``generate()`` wrapper:

* **Bytes per id.**  The vocabulary is read from the tokenizer's own pipeline
  description (``tokenizer.json``): byte-level BPE pieces go through the GPT-2 byte
  decoder map, SentencePiece pieces get ``▁`` -> space and ``<0xXX>`` byte-fallback ->
  that raw byte, special/control tokens are ``b""``.  No string decoding, which loses
  partial UTF-8 and leading spaces.
* **KV cache kept.**  ``next_logits`` crops its ``DynamicCache`` to the common prefix
  with the previous context and runs only the suffix (``DynamicCache.crop``).
* **Batching.**  ``next_logits_batch`` runs one forward pass for many rows (see its
  docstring for how rows with different histories share one cache).
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

from ..errors import InvalidConfigError, ModelNotFoundError
from ..models import ALIASES, resolve_gguf
from ..vocab import ByteVocab
from .base import MemberBase, check_context, common_prefix

log = logging.getLogger("unite_llm")

# Control tokens that end a turn in common chat formats: llama.cpp counts these as
# end-of-generation too, and a GGUF converted by transformers lists only ``<eos>``.
_END_OF_TURN = frozenset({"<end_of_turn>", "<|im_end|>", "<|eot_id|>", "<|end|>", "<|endoftext|>", "<|eom_id|>"})


def _steps(node: dict[str, Any] | None) -> list[dict[str, Any]]:
    """A tokenizer.json component as a flat list of its steps (Sequence unrolled)."""
    if not node:
        return []
    if node.get("type") == "Sequence":
        inner = node.get("decoders") or node.get("pretokenizers") or node.get("normalizers") or []
        return [s for n in inner for s in _steps(n)]
    return [node]


def _byte_decoder() -> dict[str, int]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return {ch: b for b, ch in bytes_to_unicode().items()}


def byte_pieces(tokenizer: Any, n_vocab: int) -> list[bytes]:
    """Exact bytes of every id, derived from the tokenizer's own decoding pipeline.

    ``n_vocab`` is the model's output size, which may exceed the tokenizer's (padding
    rows of the embedding matrix): those ids get ``b""`` and are never candidates.
    """
    backend = tokenizer.backend_tokenizer
    spec = json.loads(backend.to_str())
    decoder = _steps(spec.get("decoder"))
    kinds = {d.get("type") for d in decoder} | {p.get("type") for p in _steps(spec.get("pre_tokenizer"))}
    byte_level = "ByteLevel" in kinds
    byte_fallback = "ByteFallback" in kinds or bool(spec.get("model", {}).get("byte_fallback"))
    replace: list[tuple[str, str]] = []
    for d in decoder:
        if d.get("type") == "Replace" and "String" in d.get("pattern", {}):
            replace.append((d["pattern"]["String"], d.get("content", "")))
        elif d.get("type") == "Metaspace":
            replace.append((d.get("replacement", "▁"), " "))
    table = _byte_decoder() if byte_level else {}

    def piece(text: str) -> bytes:
        if byte_level and all(ch in table for ch in text):
            return bytes(table[ch] for ch in text)
        if byte_fallback and len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
            try:
                return bytes([int(text[3:5], 16)])
            except ValueError:
                pass
        for old, new in replace:
            text = text.replace(old, new)
        return text.encode("utf-8")

    pieces = [b""] * n_vocab
    for text, tid in backend.get_vocab(with_added_tokens=False).items():
        if 0 <= tid < n_vocab:
            pieces[tid] = piece(text)
    for added in spec.get("added_tokens", []):
        tid = added["id"]
        if 0 <= tid < n_vocab:
            # Special tokens are control (no text); other added tokens are literal text.
            pieces[tid] = b"" if added.get("special") else added["content"].encode("utf-8")
    for tid in tokenizer.all_special_ids:
        if 0 <= tid < n_vocab:
            pieces[tid] = b""
    return pieces


def _ids(value: Any) -> set[int]:
    if value is None:
        return set()
    if isinstance(value, int):
        return {value}
    return {int(v) for v in value}


def _torch_dtype(dtype: Any) -> Any:
    import torch

    if dtype is None or dtype == "auto" or isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(value, torch.dtype):
        raise InvalidConfigError(f"unknown dtype {dtype!r} (use e.g. float32, bfloat16, float16 or auto)")
    return value


def _gguf_architecture(path: Path) -> str:
    from gguf import GGUFReader

    field = GGUFReader(str(path)).fields.get("general.architecture")
    if field is None:
        return ""
    return bytes(field.parts[field.data[0]]).decode("utf-8")


def _check_gguf_supported(path: Path) -> None:
    """Fail early, with the list, when transformers cannot convert this architecture."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    arch = _gguf_architecture(path)
    if arch and arch not in GGUF_SUPPORTED_ARCHITECTURES:
        raise ModelNotFoundError(
            f"transformers cannot load GGUF architecture {arch!r} from {path.name} "
            f"(supported: {', '.join(sorted(GGUF_SUPPORTED_ARCHITECTURES))}); use the llama.cpp backend for it"
        )


class TransformersMember(MemberBase):
    """An ensemble member backed by a transformers causal LM.

    ``device`` places the whole model ("cpu", "cuda:1"); ``device_map`` hands
    placement to accelerate ("auto" spreads a big model over GPUs).  ``dtype``
    defaults to float32 on CPU and bfloat16 on GPU.  Unknown options (e.g. llama.cpp's
    ``n_gpu_layers`` given to a whole mixed ensemble) are ignored.
    """

    abilities = frozenset({"reset", "next_logits_batch", "token_embeddings"})

    def __init__(
        self,
        spec: str,
        *,
        name: str | None = None,
        device: str | None = None,
        device_map: str | dict[str, Any] | None = None,
        dtype: Any = None,
        trust_remote_code: bool = False,
        n_ctx: int | None = None,
        revision: str | None = None,
        n_threads: int | None = None,
        **_: Any,
    ) -> None:
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as err:
            raise InvalidConfigError(
                f"the hf: backend needs torch and transformers: pip install 'unite-llm[hf]' ({err})"
            ) from None

        if device is not None and device_map is not None:
            raise InvalidConfigError("give either device or device_map, not both")
        if n_threads:
            # Process-wide in torch.  On a CPU shared with other work, fewer threads than
            # cores avoids OpenMP spin-waiting (measured 7x faster at 1 than 2 here).
            torch.set_num_threads(n_threads)
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        source, kwargs = self._source(spec)
        kwargs |= {"trust_remote_code": trust_remote_code, "revision": revision}
        on_gpu = (device or "").startswith("cuda") or (device_map is not None and torch.cuda.is_available())
        torch_dtype = _torch_dtype(dtype) or (torch.bfloat16 if on_gpu else torch.float32)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
            # Any: transformers types the result as a generate-mixin base whose ``.to`` is a
            # functools.wraps wrapper mypy cannot bind, module attributes (the embedding's
            # ``weight``) read as ``Tensor | Module``, and close() drops the model (None).
            self.model: Any = cast(
                Any, AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, device_map=device_map, **kwargs)
            )
        except OSError as err:  # transformers' "not found / not a valid repo" family
            raise ModelNotFoundError(f"cannot load {spec!r} with transformers: {err}") from None
        if device is not None:
            self.model.to(device)
        self._setup(name or (Path(spec).stem if spec.endswith(".gguf") else spec.rstrip("/").rsplit("/", 1)[-1]), n_ctx)

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, *, name: str, n_ctx: int | None = None) -> TransformersMember:
        """A member around a model and tokenizer already in memory, on the model's device.

        For weights that come from no file: ``AutoModelForCausalLM.from_config`` (random
        weights in a real architecture, as ``bench/gpu/bench_gpu.py`` times them), or a model
        built or modified in the caller's own code.
        """
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        member = cls.__new__(cls)
        member.tokenizer = tokenizer
        member.model = model
        member._setup(name, n_ctx)
        return member

    def _setup(self, name: str, n_ctx: int | None) -> None:
        """What follows loading: vocabulary bytes, end-of-generation ids, the cache state."""
        self.model.eval()
        self.name = name
        self.device = self.model.get_input_embeddings().weight.device
        config = self.model.config.get_text_config()
        n_vocab = int(config.vocab_size)
        self.vocab = ByteVocab(byte_pieces(self.tokenizer, n_vocab), frozenset(self._eog_ids(n_vocab)))
        limit = getattr(config, "max_position_embeddings", None) or 4096
        self.n_ctx = min(n_ctx, limit) if n_ctx else int(limit)
        self.chat_template: str | None = self.tokenizer.chat_template or None
        self.bos_text = self.tokenizer.bos_token or ""
        self.eos_text = self.tokenizer.eos_token or ""
        self._add_special = bool(self.tokenizer("", add_special_tokens=True).input_ids)
        self._backend = self.tokenizer.backend_tokenizer
        # transformers 5 renamed ``past_key_values`` to ``cache``; the cache object is
        # updated in place either way.
        self._cache_kw = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        self._pad_id = int(self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0)
        self.n_evaluated = 0
        self._context: list[int] = []
        self._cache: Any = None
        self._batch: _BatchCache | None = None

    @staticmethod
    def _source(spec: str) -> tuple[str, dict[str, Any]]:
        if spec in ALIASES or spec.endswith(".gguf"):
            path = resolve_gguf(spec)
            _check_gguf_supported(path)
            return str(path.parent), {"gguf_file": path.name}
        path = Path(spec).expanduser()
        if path.exists() and not path.is_dir():
            raise ModelNotFoundError(f"{spec!r} is a file but not a .gguf; give a model directory or a hub id")
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise ModelNotFoundError(f"{spec!r} is a directory without a config.json: not a transformers model")
            return str(path), {}
        return spec, {}

    def _eog_ids(self, n_vocab: int) -> set[int]:
        eog = _ids(self.tokenizer.eos_token_id) | _ids(getattr(self.model.generation_config, "eos_token_id", None))
        for tid, token in self.tokenizer.added_tokens_decoder.items():
            if token.special and token.content in _END_OF_TURN:
                eog.add(tid)
        return {t for t in eog if 0 <= t < n_vocab}

    # -- tokenizer ------------------------------------------------------------------

    def tokenize(self, text: bytes, *, add_bos: bool = False, special: bool = False) -> list[int]:
        # The backend tokenizer directly: the decode loop tokenizes short tails many
        # times a step, and the Python wrapper's overhead would dominate.
        backend = self._backend
        backend.encode_special_tokens = not special
        try:
            ids = backend.encode(text.decode("utf-8"), add_special_tokens=add_bos and self._add_special).ids
        finally:
            backend.encode_special_tokens = False
        return list(ids)

    def reset(self) -> None:
        """Forget the KV cache: the next context is evaluated from scratch."""
        self._cache = self._batch = None
        self._context = []

    # -- scoring --------------------------------------------------------------------

    def _check(self, context: Sequence[int]) -> None:
        if not context:
            raise ValueError("next_logits needs at least one token (BOS or text)")
        check_context(self, len(context))

    def next_logits(self, context: Sequence[int]) -> np.ndarray:
        import torch
        from transformers import DynamicCache

        self._check(context)
        keep = min(common_prefix(self._context, context), len(context) - 1)
        if self._cache is None or keep == 0:
            # A cache without a config holds every layer in full (no sliding-window
            # truncation), so it can always be cropped back.
            self._cache, keep = DynamicCache(), 0
        elif keep < self._cache.get_seq_length():
            # A negative count removes that many tokens (the form transformers 4.x and 5.x share).
            self._cache.crop(keep - self._cache.get_seq_length())
        todo = list(context[keep:])
        with torch.inference_mode():
            out = self.model(
                input_ids=torch.tensor([todo], device=self.device),
                use_cache=True,
                logits_to_keep=1,
                **{self._cache_kw: self._cache},
            )
        self.n_evaluated += len(todo)
        self._context = list(context)
        return out.logits[0, -1].float().cpu().numpy()

    def next_logits_batch(self, contexts: Sequence[Sequence[int]], rows: Sequence[int] | None = None) -> Any:
        """Next-token scores for many contexts in one forward pass: a ``[B, V]`` tensor.

        ``rows`` names each context (default ``0..B-1``); a row continues the cache of
        the same name from the previous call, rows not named again are dropped, and
        new names start a fresh batch.  All rows share one ``DynamicCache`` whose
        columns need not line up: each row's tokens sit at cache columns of its own,
        and an attention mask marks them.  A row whose tail changed (re-tokenisation)
        masks its stale columns out instead of cropping the others; the new suffixes
        are appended as one block, left-padded to the longest, with each token's
        position id set to its position in its own row.  So every row evaluates only
        its new tokens, and attention sees exactly the row's context.  (One caveat: a
        sliding-window layer counts cache columns, masked ones included, so for contexts
        longer than the window a row's window is a little shorter than alone.)

        The scores stay on the model's device (float32) so that top-k and the gather of
        the union candidates run there; only those few numbers are copied out.
        """
        import torch

        rows = list(range(len(contexts))) if rows is None else list(rows)
        if len(rows) != len(contexts) or len(set(rows)) != len(rows):
            raise ValueError("rows must name each context once")
        for ctx in contexts:
            self._check(ctx)
        if self._batch is None or not set(rows) <= set(self._batch.rows):
            self._batch = _BatchCache(rows, self.device)
        batch = self._batch
        batch.select(rows)
        keeps = [min(common_prefix(old, ctx), len(ctx) - 1) for old, ctx in zip(batch.contexts, contexts)]
        suffixes = [list(ctx[k:]) for ctx, k in zip(contexts, keeps)]
        width = max(len(s) for s in suffixes)
        ids = torch.full((len(rows), width), self._pad_id, dtype=torch.long)
        pos = torch.zeros((len(rows), width), dtype=torch.long)
        new_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for b, (suffix, keep) in enumerate(zip(suffixes, keeps)):
            n = len(suffix)
            ids[b, width - n :] = torch.tensor(suffix, dtype=torch.long)
            pos[b, width - n :] = torch.arange(keep, keep + n)
            pos[b, : width - n] = keep  # pads: any valid position; they are masked out
            new_mask[b, width - n :] = 1
        batch.drop_stale(keeps)
        mask = torch.cat([batch.mask, new_mask.to(self.device)], dim=1)
        with torch.inference_mode():
            out = self.model(
                input_ids=ids.to(self.device),
                attention_mask=mask,
                position_ids=pos.to(self.device),
                use_cache=True,
                logits_to_keep=1,
                **{self._cache_kw: batch.cache},
            )
        batch.advance(contexts, keeps, suffixes, mask, width)
        self.n_evaluated += sum(len(s) for s in suffixes)
        return out.logits[:, -1].float()

    def token_embeddings(self) -> np.ndarray:
        """The input embedding matrix as float32 ``[vocab, dim]`` on the host (DeePEn's
        relative representations); rows past the tokenizer's vocabulary (padding) are cut."""
        weight = self.model.get_input_embeddings().weight
        return weight.detach().float().cpu().numpy()[: len(self.vocab)]

    def close(self) -> None:
        self._cache = self._batch = None
        self.model = None

    def __repr__(self) -> str:
        return f"TransformersMember({self.name!r}, vocab={len(self.vocab)}, n_ctx={self.n_ctx}, device={self.device})"


class _BatchCache:
    """The batch's shared KV cache and, per row, which cache columns hold its tokens."""

    def __init__(self, rows: list[int], device: Any) -> None:
        import torch
        from transformers import DynamicCache

        self.rows = list(rows)
        self.cache = DynamicCache()
        self.contexts: list[list[int]] = [[] for _ in rows]
        self.columns: list[list[int]] = [[] for _ in rows]
        self.mask = torch.zeros((len(rows), 0), dtype=torch.long, device=device)

    def select(self, rows: list[int]) -> None:
        """Keep (and order) the cache rows named in ``rows``; finished rows drop out."""
        import torch

        if rows == self.rows:
            return
        index = [self.rows.index(r) for r in rows]
        tensor = torch.tensor(index, dtype=torch.long, device=self.mask.device)
        self.cache.batch_select_indices(tensor)
        self.mask = self.mask.index_select(0, tensor)
        self.rows = list(rows)
        self.contexts = [self.contexts[i] for i in index]
        self.columns = [self.columns[i] for i in index]

    def drop_stale(self, keeps: list[int]) -> None:
        """Mask the columns of tokens that a row no longer has (its tail changed)."""
        for b, keep in enumerate(keeps):
            stale = self.columns[b][keep:]
            if stale:
                self.mask[b, stale] = 0

    def advance(
        self, contexts: Sequence[Sequence[int]], keeps: list[int], suffixes: list[list[int]], mask: Any, width: int
    ) -> None:
        start = self.mask.shape[1]
        self.mask = mask
        for b, (ctx, keep, suffix) in enumerate(zip(contexts, keeps, suffixes)):
            first = start + width - len(suffix)
            self.columns[b] = self.columns[b][:keep] + list(range(first, first + len(suffix)))
            self.contexts[b] = list(ctx)
