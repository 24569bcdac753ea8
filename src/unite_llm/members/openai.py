"""A model already served behind an OpenAI-compatible API: ``openai:<base_url>#<model>``.

For models served by vLLM or llama.cpp's server on other machines.  Each step is one
``/completions`` request for one token over the member's own prompt text, asking for
``logprobs=top_n``: the returned top-n are the member's next-token candidates and
their log-probabilities (log-softmax of the logits, i.e. logits up to a constant,
which is all the UniTE step needs).

A union candidate outside the returned top-n needs a number too:

* ``exact="logit_bias"`` (default): the one token-logprob facility that every such
  server has.  The candidate's id gets ``logit_bias=+100``, greedy decoding emits it,
  and the server reports its log-probability from the unbiased logits: exact, one
  cheap request (a single cached-prefix token) per outside candidate.  (``echo`` with
  prompt logprobs would be the textbook route, but llama-cpp-python 0.3 pairs each
  prompt token with the logits *after* it, and a text prompt cannot ask for a token
  that merges with the text before it.)
* ``exact="bound"``, or where the facility gives nothing (an end-of-generation id ends
  the completion before a logprob is reported): the smallest returned log-probability,
  an upper bound on any token outside the top-n.  Such numbers are labelled: the step
  record's ``approximated`` lists ``"member: candidate"`` for each.

The tokenizer and byte vocabulary come from a local copy of the model's GGUF file
(``tokenizer=<path or alias>``, an option or on the spec as ``...#model?tokenizer=...``;
read with llama.cpp's ``vocab_only``): the servers' ``/tokenize``/``/detokenize``
endpoints turn ids into *text*, which loses the bytes of partial UTF-8 pieces and the
identity of duplicate pieces that UniTE works on.

Limits of llama-cpp-python's server, which keys ``top_logprobs`` by token *text*
(vLLM can return ids with ``return_tokens_as_token_ids``, used when present): control
tokens, including end-of-generation, all read as ``""`` and are dropped, so END never
enters this member's top-k (a step where an unnamed token outranks the k-th candidate is
labelled ``<top-k may miss END>``); of several ids with the same text only the id whose
bytes equal the text gets the number.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Any

from ..candidates import candidate_text
from ..errors import InvalidConfigError, ModelNotFoundError
from ..vocab import ByteVocab
from .base import MemberBase, check_context, common_prefix
from .remote import RemoteLogits, WireStats, parse_spec

_TOKEN_ID = re.compile(r"^token_id:(\d+)$")  # vLLM's return_tokens_as_token_ids


class OpenAIMember(MemberBase):
    """A member served by an OpenAI-compatible completions endpoint (module docstring)."""

    def __init__(
        self,
        spec: str,
        *,
        name: str | None = None,
        tokenizer: str | None = None,
        top_n: int = 100,
        exact: str = "logit_bias",
        n_ctx: int | None = None,
        api_key: str | None = None,
        timeout_s: float = 120.0,
        token_ids: bool = False,
        n_threads: int | None = None,  # accepted for a uniform CLI; the server has its own
    ) -> None:
        import httpx

        from ..models import resolve_gguf
        from .llama_cpp import _quiet_llama_log, byte_vocab, open_llama

        base_url, sep, model = spec.partition("#")
        if not sep or not model or not base_url.startswith(("http://", "https://")):
            raise InvalidConfigError(f"openai member spec must be openai:<base_url>#<model>, got {spec!r}")
        if exact not in ("bound", "logit_bias"):
            raise InvalidConfigError(f"exact must be 'logit_bias' or 'bound', got {exact!r}")
        if tokenizer is None:
            raise InvalidConfigError(
                f"openai member {model!r} needs tokenizer=<GGUF path or alias> of the served model: "
                "a server's tokenize endpoints give text, not the exact bytes of each token"
            )
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.name = name or model
        self.top_n = int(top_n)
        self.exact = exact
        self.token_ids = token_ids  # vLLM: top_logprobs keyed "token_id:N" (exact ids)
        _quiet_llama_log()
        path = resolve_gguf(tokenizer)
        self._tok = open_llama(path, vocab_only=True, verbose=False)
        self.vocab: ByteVocab = byte_vocab(self._tok)
        meta = self._tok.metadata
        self.chat_template: str | None = meta.get("tokenizer.chat_template") or None
        self.bos_text = self._special_text(self._tok.token_bos())
        self.eos_text = self._special_text(self._tok.token_eos())
        self._bos = self._tok.token_bos()
        self.n_ctx = int(n_ctx or 4096)
        self.n_evaluated = 0
        self.wire = WireStats()
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout_s, headers=headers)
        self._texts: dict[int, bytes] = {}
        # Texts that several ids read as once the server decodes with errors="ignore"
        # (b" " and b" \xe2" are both " "): the number under such a key is not this id's.
        by_text: dict[str, int] = {}
        for piece in self.vocab.pieces:
            if piece:
                text = piece.decode("utf-8", errors="ignore")
                by_text[text] = by_text.get(text, 0) + 1
        self._shared_texts = {t for t, n in by_text.items() if n > 1}
        self._last: list[int] = []
        self._step = 0
        try:
            models = self._http.get("/models")
        except httpx.HTTPError as err:
            raise ModelNotFoundError(f"cannot reach the OpenAI-compatible server at {self.base_url}: {err}") from None
        served = [m.get("id") for m in models.json().get("data", [])] if models.status_code == 200 else []
        if served and model not in served:
            raise ModelNotFoundError(f"{self.base_url} does not serve {model!r} (it serves: {', '.join(served)})")

    # -- tokenizer (local) -------------------------------------------------------------

    def _special_text(self, tid: int) -> str:
        if tid < 0:
            return ""
        return self._tok.detokenize([tid], special=True).decode("utf-8", errors="replace")

    def tokenize(self, text: bytes, *, add_bos: bool = False, special: bool = False) -> list[int]:
        return self._tok.tokenize(text, add_bos=add_bos, special=special)

    def _text_of(self, ids: Sequence[int]) -> bytes:
        """The prompt text whose tokenization (server side, BOS added there) is ``ids``."""
        if ids and ids[0] == self._bos:
            ids = ids[1:]
        out = []
        for tid in ids:
            piece = self.vocab.pieces[tid]
            if not piece:  # control tokens are spelled out; the server parses them back
                if tid not in self._texts:
                    self._texts[tid] = self._tok.detokenize([tid], special=True)
                piece = self._texts[tid]
            out.append(piece)
        return b"".join(out)

    # -- the wire ------------------------------------------------------------------------

    def _complete(self, prompt: str, **fields: Any) -> dict[str, Any]:
        import httpx

        body = {"model": self.model, "prompt": prompt, "max_tokens": 1, "temperature": 0.0, **fields}
        t0 = time.perf_counter()
        try:
            r = self._http.post("/completions", json=body)
        except httpx.HTTPError as err:
            raise ModelNotFoundError(f"{self.name}: request to {self.base_url} failed: {err}") from None
        if r.status_code != 200:
            raise InvalidConfigError(f"{self.name}: {self.base_url}/completions answered {r.status_code}: {r.text[:300]}")
        self.wire.add(len(r.request.content), len(r.content), time.perf_counter() - t0)
        return r.json()["choices"][0]

    def _ids_of_key(self, key: str) -> int | None:
        m = _TOKEN_ID.match(key)
        if m:
            return int(m.group(1))
        ids = self.vocab.ids_of(key.encode("utf-8")) if key else ()
        return ids[0] if ids else None

    def next_logits(self, context: Sequence[int]) -> RemoteLogits:
        check_context(self, len(context))
        context = list(context)
        prompt_bytes = self._text_of(context)
        prompt = prompt_bytes.decode("utf-8", errors="replace")
        lossy = prompt.encode("utf-8") != prompt_bytes  # the output ends inside a UTF-8 character
        extra = {"return_tokens_as_token_ids": True} if self.token_ids else {}
        choice = self._complete(prompt, logprobs=self.top_n, **extra)
        top = (choice.get("logprobs") or {}).get("top_logprobs") or [{}]
        known: dict[int, float] = {}
        shared: set[int] = set()  # ids whose number came under a text other ids share
        hidden = float("-inf")  # best score of a token the server showed only as "" (control or partial UTF-8)
        for key, lp in (top[0] or {}).items():
            tid = self._ids_of_key(key)
            if tid is not None and tid not in known:
                known[tid] = float(lp)
                if key in self._shared_texts and not _TOKEN_ID.match(key):
                    shared.add(tid)
            elif tid is None:
                hidden = max(hidden, float(lp))
        # The smallest number the server returned bounds every token outside its top-n.
        floor = min(known.values(), default=float("-inf"))
        if self.exact == "logit_bias" and not lossy:
            top1 = max(known.values(), default=float("-inf"))
            for tid in sorted(shared):  # ask for this id's own number
                value = self._biased_logprob(prompt, tid, top1)
                if value is not None:
                    known[tid] = value
                    shared.discard(tid)
        if choice.get("finish_reason") == "stop" and not choice.get("text"):
            hidden = float("inf")  # greedy picked an end-of-generation token: END is this member's top-1
        self.n_evaluated += len(context) - common_prefix(self._last, context)
        self._last = context
        self._step += 1
        step = self._step
        approximated: list[str] = ["<prompt not UTF-8>"] if lossy else []

        def fetch(missing: list[int]) -> tuple[list[float], list[int]]:
            ask = self.exact == "logit_bias" and not lossy
            exact = [self._biased_logprob(prompt, t, floor) if ask and t not in self.vocab.eog_ids else None for t in missing]
            return [floor if v is None else v for v in exact], [t for t, v in zip(missing, exact) if v is None]

        ranked = sorted(known, key=lambda t: -known[t])

        def rank(vocab: ByteVocab, k: int, ignore_eos: bool) -> list[int]:
            ok = [t for t in ranked if vocab.emittable[t] or (not ignore_eos and t in vocab.eog_ids)][:k]
            approximated.extend(candidate_text(vocab.pieces[t]) for t in ok if t in shared)
            if len(ok) < k:
                approximated.append("<top-k incomplete>")
            elif not ignore_eos and hidden >= known[ok[-1]]:
                approximated.append("<top-k may miss END>")  # an unnamed token outranks the k-th
            return ok

        return RemoteLogits(
            vocab=self.vocab,
            known=dict(known),
            tops={},
            fetch_top=None,
            fetch=fetch,
            fetch_full=None,
            is_current=lambda: self._step == step,
            rank=rank,
            approximated=approximated,
        )

    def _biased_logprob(self, prompt: str, tid: int, ceiling: float) -> float | None:
        """log p(tid | prompt) through ``logit_bias``: bias ``tid`` by +100 so that greedy
        decoding emits it, and read the log-probability the server reports for the emitted
        token.  llama-cpp-python reports it from the unbiased logits (tested); a server
        that reports the *biased* number is caught by ``ceiling``: the token cannot be
        likelier than what the unbiased top-n already showed.

        None when the server emitted something else or nothing (an end-of-generation id
        ends the completion before any logprob is reported), or a number above the
        ceiling: the caller then bounds it.
        """
        choice = self._complete(prompt, logprobs=1, logit_bias={str(tid): 100.0})
        lp = choice.get("logprobs") or {}
        tokens, values = lp.get("tokens") or [], lp.get("token_logprobs") or []
        if len(tokens) != 1 or not values or values[0] is None:
            return None
        if self._ids_of_key(tokens[0]) != tid and tokens[0] != self.vocab.pieces[tid].decode("utf-8", errors="ignore"):
            return None
        value = float(values[0])
        return value if value <= ceiling + 1e-4 else None

    def close(self) -> None:
        self._http.close()
        self._tok.close()

    def __repr__(self) -> str:
        return f"OpenAIMember({self.name!r}, {self.base_url}#{self.model})"


def load(spec: str, **options: Any) -> OpenAIMember:
    """The ``openai:`` loader: options may also be written on the spec, so that the CLI can
    give each member its own (``openai:http://h:8000/v1#smol?tokenizer=smollm2-135m-instruct``)."""
    import inspect

    inner, query = parse_spec(spec)
    known = inspect.signature(OpenAIMember).parameters
    unknown = sorted(set(query) - set(known))
    if unknown:
        raise InvalidConfigError(f"unknown openai member option(s) {', '.join(unknown)} in {spec!r}")
    return OpenAIMember(inner, **(options | query))


__all__ = ["OpenAIMember", "load"]
