"""What the OpenAI-compatible endpoints do, in vLLM's manner (``serving_completion.py`` and co.).

:class:`OpenAIServing` holds the ensemble's side of every route in :mod:`.app`: the checks
made **before** a request is queued (model name, unsupported settings, each member's prompt
length against its context), the :class:`~unite_llm.sampling.GenerationConfig` and the job it
submits to the :class:`~.scheduler.Scheduler`.  The answer, one JSON body or a stream of
server-sent events ending ``data: [DONE]``, is built by the endpoint's own body builder
(:class:`CompletionBodies`, :class:`ChatBodies`, :class:`TokenizerBodies`, on a shared
:class:`Bodies` base) from the models of :mod:`.protocol`.  A bad request so costs no
generation time and gets a proper HTTP status (:class:`APIError`) rather than an error in the
middle of a stream.

``echo`` returns the prompt's own tokens and log-probabilities before the completion's
(OpenAI's legacy shape, what lm-evaluation-harness's ``local-completions`` reads for
log-likelihood tasks): the prompt in the *reference* member's tokens (the primary, else the
first member; the same tokenizer behind ``/tokenize``, ``/detokenize`` and
``/tokenizer_info``, vLLM's routes, and behind token-id prompts), each token's value from
:func:`~unite_llm.loglik.prompt_logprobs` (for one member exactly its own).

The END step is told apart by its flag (``StepRecord.end``, and ``end`` on each union
entry), never by its text: a real piece of text that reads ``<END>`` is an output token
like any other and counts in ``usage`` and ``logprobs``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import asdict
from typing import Any, ClassVar

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from ..engine import Ensemble, GenerationOutput, StepRecord, UnionEntry
from ..errors import ContextLengthError, InvalidConfigError, ModelNotFoundError, UniteError, as_utf8
from ..loglik import PromptLogprobs, context_track, prompt_logprobs, reference_member
from ..prompts import Prompt, start_track
from ..sampling import GenerationConfig
from .protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionResponseChoice,
    ChatCompletionStreamChoice,
    ChatCompletionStreamResponse,
    ChatLogprobs,
    ChatLogprobToken,
    ChatMessageOut,
    ChatTopLogprob,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    CompletionResponseChoice,
    CompletionStreamResponse,
    DeltaMessage,
    DetokenizeRequest,
    DetokenizeResponse,
    ErrorBody,
    ErrorDetail,
    FinishReason,
    ModelCard,
    ModelList,
    StreamUnite,
    TokenizeRequest,
    TokenizeResponse,
    UniteBlock,
    UniteChoice,
    UniteOptions,
    Usage,
    _Common,
)
from .scheduler import ChunkEvent, DoneEvent, ErrorEvent, Job, JobEvent, OverloadedError, Scheduler

log = logging.getLogger("unite_llm.server")

StreamResponse = CompletionStreamResponse | ChatCompletionStreamResponse


# -- errors ----------------------------------------------------------------------------


RETRY_AFTER_S = "1"
"""``Retry-After`` of a 503: the queue moves on within a step or two."""


class APIError(Exception):
    """An error with its HTTP status and OpenAI error fields."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers

    def body(self) -> ErrorBody:
        return ErrorBody(error=ErrorDetail(message=self.message, type=self.type, param=self.param, code=self.code))

    def response(self) -> JSONResponse:
        return JSONResponse(self.body().model_dump(), status_code=self.status, headers=self.headers)


def api_error(err: BaseException) -> APIError:
    """Any exception as an :class:`APIError`: user errors keep their message, bugs do not."""
    if isinstance(err, APIError):
        return err
    if isinstance(err, OverloadedError):  # a real overload: worth a retry, after a pause
        return APIError(503, str(err), type="server_error", code="server_overloaded", headers={"Retry-After": RETRY_AFTER_S})
    if isinstance(err, UniteError):
        code = {ContextLengthError: "context_length_exceeded", ModelNotFoundError: "model_not_found"}.get(type(err))
        return APIError(err.http_status, str(err), type="invalid_request_error", code=code)
    log.error("internal error", exc_info=err)
    return APIError(500, "internal server error (see the server log)", type="server_error", code="internal_error")


def model_not_found(model: str, served: str) -> APIError:
    return APIError(
        404, f"the model {model!r} does not exist; this server serves {served!r}", param="model", code="model_not_found"
    )


def unsupported(message: str, param: str) -> APIError:
    return APIError(400, message, param=param, code="unsupported_value")


class ClientGone(Exception):
    """The client closed its connection while its request waited or ran."""


# -- building responses from step records ----------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def logprob(p: float) -> float:
    return math.log(p) if p > 0 else -9999.0


def text_steps(steps: Sequence[StepRecord]) -> list[StepRecord]:
    """The steps that appended text: all but the END step (flagged ``end``, whatever its text reads)."""
    return [s for s in steps if not s.end]


def top_candidates(step: StepRecord, n: int) -> list[UnionEntry]:
    """The step's ``n`` most probable union candidates, less END (so possibly fewer than ``n``)."""
    ranked = sorted(step.union, key=lambda c: -c.prob)[:n]
    return [c for c in ranked if not c.end]


def completion_logprobs(steps: Sequence[StepRecord], n_top: int, offset: int = 0) -> CompletionLogprobs:
    """OpenAI's legacy completions ``logprobs`` object: the ensemble probability of each piece."""
    tokens: list[str] = []
    lps: list[float] = []
    tops: list[dict[str, float]] = []
    offsets: list[int] = []
    for s in text_steps(steps):
        tokens.append(s.chosen)
        lps.append(logprob(s.prob))
        tops.append({c.text: logprob(c.prob) for c in top_candidates(s, n_top)})
        offsets.append(offset)
        offset += len(s.chosen)
    return CompletionLogprobs(tokens=tokens, token_logprobs=lps, top_logprobs=tops if n_top else None, text_offset=offsets)


def echo_logprobs(echo: PromptLogprobs, pieces: Sequence[bytes], n_top: int) -> CompletionLogprobs:
    """The ``logprobs`` object of an echoed prompt, in the reference member's tokens (``pieces``
    spells its vocabulary).  ``top_logprobs`` holds the member's own alternatives for a one-member
    model; an ensemble's prompt positions hold the echoed token alone (see :mod:`unite_llm.loglik`)."""

    def spell(piece: bytes) -> str:
        """A token's text; part of a UTF-8 character as OpenAI writes it (``bytes:\\xe4\\xbd``)."""
        try:
            return piece.decode("utf-8")
        except UnicodeDecodeError:
            return "bytes:" + "".join(f"\\x{b:02x}" for b in piece)

    text = b"".join(echo.pieces)
    tokens, offsets, at = [], [], 0
    for piece in echo.pieces:
        tokens.append(spell(piece))
        offsets.append(len(text[:at].decode("utf-8", errors="ignore")))
        at += len(piece)
    tops: list[dict[str, float]] | None = None
    if n_top:
        tops = []
        for t, (token, lp) in enumerate(zip(tokens, echo.logprobs)):
            entry: dict[str, float] = {}
            if echo.top is not None:
                entry = {spell(pieces[i]): v for i, v in list(echo.top[t].items())[:n_top]}
            if lp is not None:
                entry.setdefault(token, lp)
            tops.append(entry)
    return CompletionLogprobs(tokens=tokens, token_logprobs=list(echo.logprobs), top_logprobs=tops, text_offset=offsets)


def join_logprobs(head: CompletionLogprobs, tail: CompletionLogprobs) -> CompletionLogprobs:
    """The echoed prompt's logprobs followed by the completion's (offsets continue)."""
    tops = None
    if head.top_logprobs is not None and tail.top_logprobs is not None:
        tops = head.top_logprobs + tail.top_logprobs
    return CompletionLogprobs(
        tokens=head.tokens + tail.tokens,
        token_logprobs=head.token_logprobs + tail.token_logprobs,
        top_logprobs=tops,
        text_offset=head.text_offset + tail.text_offset,
    )


def chat_logprobs(steps: Sequence[StepRecord], n_top: int) -> ChatLogprobs:
    """OpenAI's chat ``logprobs`` object (its ``content`` list)."""

    def entry(text: str, p: float) -> ChatTopLogprob:
        return ChatTopLogprob(token=text, logprob=logprob(p), bytes=list(text.encode("utf-8")))

    content: list[ChatLogprobToken] = []
    for s in text_steps(steps):
        chosen = entry(s.chosen, s.prob)
        top = [entry(c.text, c.prob) for c in top_candidates(s, n_top)]
        content.append(ChatLogprobToken(token=chosen.token, logprob=chosen.logprob, bytes=chosen.bytes, top_logprobs=top))
    return ChatLogprobs(content=content)


def step_json(step: StepRecord, opts: UniteOptions) -> dict[str, Any]:
    """A step record for the ``unite`` extra: ``end`` always, the union only when asked for."""
    return step.to_dict(full=opts.union)


def usage_of(outputs: Sequence[GenerationOutput]) -> Usage:
    prompt = sum(max(o.prompt_tokens.values(), default=0) for o in outputs)
    completion = sum(len(text_steps(o.steps)) for o in outputs)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def sse(data: BaseModel | str) -> str:
    """One server-sent event."""
    return f"data: {data if isinstance(data, str) else json.dumps(data.model_dump(), ensure_ascii=False)}\n\n"


# -- waiting for the worker ------------------------------------------------------------


async def next_event(job: Job, request: Request | None, getter: list[asyncio.Task[JobEvent]]) -> JobEvent:
    """The job's next event; with ``request``, checks every 0.25 s that the client is still there.

    ``getter`` holds the pending ``events.get()`` between calls (the caller cancels it when done)."""
    if not getter:
        getter.append(asyncio.ensure_future(job.events.get()))
    while True:
        done, _ = await asyncio.wait(getter, timeout=0.25 if request is not None else None)
        if done:
            return getter.pop().result()
        if request is not None and await request.is_disconnected():
            raise ClientGone


async def collect(job: Job, request: Request) -> GenerationOutput:
    """The job's final output (raises the worker's error; :class:`ClientGone` if the client left)."""
    getter: list[asyncio.Task[JobEvent]] = []
    final: GenerationOutput | None = None
    try:
        while True:
            event = await next_event(job, request, getter)
            if isinstance(event, ErrorEvent):
                raise event.error
            if isinstance(event, ChunkEvent) and event.chunk.output is not None:
                final = event.chunk.output
            elif isinstance(event, DoneEvent):
                assert final is not None, "the worker finished a job without its final chunk"
                return final
    finally:
        for t in getter:
            t.cancel()


async def collect_all(jobs: list[Job], request: Request) -> list[GenerationOutput] | None:
    """Every job's output in order; None if the client went away (every job is then cancelled)."""
    try:
        return [await collect(j, request) for j in jobs]
    except ClientGone:
        return None
    finally:
        for j in jobs:
            j.cancel()  # no-op for finished jobs; frees the worker if we stopped early


# -- response bodies: one builder per endpoint ------------------------------------------


class Bodies:
    """What every endpoint's bodies share: the ensemble and the name it is served under."""

    def __init__(self, ensemble: Ensemble, model_name: str) -> None:
        self.ensemble = ensemble
        self.model_name = model_name

    def check_model(self, model: str | None) -> None:
        """A request's optional ``model`` must name the served one (404 otherwise)."""
        if model is not None and model != self.model_name:
            raise model_not_found(model, self.model_name)


class GenerationBodies(Bodies):
    """The bodies of a generating endpoint: its plain response (a subclass's ``response``) and
    its stream of chunks, each with the ``unite`` extra when the request asked for it.  A
    subclass names its id prefix and chunk type and builds a chunk's choice (:meth:`stream_choice`);
    the stream's order (opening chunks, text chunks, the usage chunk, ``[DONE]``) is here."""

    id_prefix: ClassVar[str]
    stream_type: ClassVar[type[StreamResponse]]

    def unite_block(self, outputs: Sequence[GenerationOutput], opts: UniteOptions) -> UniteBlock | None:
        """The ``unite`` extra of a plain response; None unless the request asked for it."""
        if not opts.wanted:
            return None
        return UniteBlock(
            members=self.ensemble.names,
            weights=[float(w) for w in self.ensemble.weights],
            choices=[
                UniteChoice(
                    index=i, prompt_tokens=o.prompt_tokens, steps=[step_json(s, opts) for s in o.steps], timing=asdict(o.timing)
                )
                for i, o in enumerate(outputs)
            ],
        )

    def opening(self, rid: str, created: int) -> list[StreamResponse]:
        """The chunks sent before any text (none unless a subclass has some)."""
        return []

    def stream_choice(
        self, text: str, finish: FinishReason | None, steps: Sequence[StepRecord], offset: int, n_logprobs: int | None
    ) -> Any:
        """A chunk's one choice: ``text`` with the logprobs of ``steps`` (those behind it since
        the last chunk; ``offset`` is where ``text`` starts in the output)."""
        raise NotImplementedError

    def stream_chunk(
        self,
        rid: str,
        created: int,
        *,
        text: str,
        finish: FinishReason | None,
        steps: Sequence[StepRecord],
        offset: int,
        n_logprobs: int | None,
        unite: StreamUnite | None,
    ) -> StreamResponse:
        """One chunk of the stream (see :meth:`stream_choice`)."""
        choice = self.stream_choice(text, finish, steps, offset, n_logprobs)
        return self.stream_type(id=rid, created=created, model=self.model_name, choices=[choice], unite=unite)

    def streaming(self, job: Job, req: _Common, n_logprobs: int | None) -> StreamingResponse:
        return StreamingResponse(
            self.event_stream(job, req, n_logprobs),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def event_stream(self, job: Job, req: _Common, n_logprobs: int | None) -> AsyncIterator[str]:
        """Server-sent events for one job; closing it (client gone) cancels the job.

        Each chunk carries the text made safe to show by the steps since the previous chunk
        (a step may add none: a partial UTF-8 character, the END step); the last one has the
        finish reason, then the usage chunk if asked for, then ``[DONE]``.  A worker error
        becomes an error event in OpenAI's schema, followed by ``[DONE]``."""
        rid = new_id(self.id_prefix)
        created = int(time.time())
        opts = req.unite or UniteOptions()
        pending: list[StepRecord] = []
        sent_index = -1
        offset = 0
        getter: list[asyncio.Task[JobEvent]] = []

        def chunk(text: str, out: GenerationOutput | None = None) -> StreamResponse:
            nonlocal offset
            unite = None
            if opts.wanted:
                steps = [step_json(s, opts) for s in pending]
                if out is None:
                    unite = StreamUnite(steps=steps)
                else:  # the last chunk: also what a plain response's unite block has
                    unite = StreamUnite(
                        steps=steps, members=self.ensemble.names, prompt_tokens=out.prompt_tokens, timing=asdict(out.timing)
                    )
            body = self.stream_chunk(
                rid,
                created,
                text=text,
                finish=FinishReason(out.finish_reason) if out is not None else None,
                steps=pending,
                offset=offset,
                n_logprobs=n_logprobs,
                unite=unite,
            )
            offset += len(text)
            pending.clear()
            return body

        try:
            for first in self.opening(rid, created):
                yield sse(first)
            while True:
                event = await next_event(job, None, getter)
                if isinstance(event, ErrorEvent):
                    yield sse(api_error(event.error).body())
                    break
                if isinstance(event, DoneEvent):
                    break
                piece = event.chunk
                if piece.output is None:
                    assert piece.step is not None
                    pending.append(piece.step)
                    sent_index = piece.step.index
                    if piece.text:
                        yield sse(chunk(piece.text))
                    continue
                out = piece.output
                pending.extend(s for s in out.steps if s.index > sent_index)
                yield sse(chunk(piece.text, out))
                if req.stream_options is not None and req.stream_options.include_usage:
                    yield sse(self.stream_type(id=rid, created=created, model=self.model_name, choices=[], usage=usage_of([out])))
            yield sse("[DONE]")
        finally:
            job.cancel()  # no-op once finished; frees the worker when the client went away
            for t in getter:
                t.cancel()


class CompletionBodies(GenerationBodies):
    """``/v1/completions``: a :class:`CompletionResponse`, or chunks of :class:`CompletionStreamResponse`."""

    id_prefix = "cmpl"
    stream_type = CompletionStreamResponse

    def response(
        self,
        outputs: Sequence[GenerationOutput],
        req: CompletionRequest,
        echoes: Sequence[tuple[bytes, PromptLogprobs]] | None = None,
    ) -> CompletionResponse:
        n_top = req.logprobs
        pieces = reference_member(self.ensemble).vocab.pieces
        choices = []
        for i, o in enumerate(outputs):
            prompt_text = echoes[i][0].decode("utf-8", errors="replace") if echoes is not None else ""
            text = prompt_text + o.text
            logprobs = completion_logprobs(o.steps, n_top, offset=len(prompt_text)) if n_top is not None else None
            if echoes is not None and logprobs is not None:
                logprobs = join_logprobs(echo_logprobs(echoes[i][1], pieces, n_top or 0), logprobs)
            choices.append(
                CompletionResponseChoice(index=i, text=text, logprobs=logprobs, finish_reason=FinishReason(o.finish_reason))
            )
        return CompletionResponse(
            id=new_id(self.id_prefix),
            created=int(time.time()),
            model=self.model_name,
            choices=choices,
            usage=usage_of(outputs),
            unite=self.unite_block(outputs, req.unite or UniteOptions()),
        )

    def stream_choice(
        self, text: str, finish: FinishReason | None, steps: Sequence[StepRecord], offset: int, n_logprobs: int | None
    ) -> CompletionResponseChoice:
        return CompletionResponseChoice(
            index=0,
            text=text,
            logprobs=completion_logprobs(steps, n_logprobs or 0, offset) if n_logprobs is not None else None,
            finish_reason=finish,
        )


class ChatBodies(GenerationBodies):
    """``/v1/chat/completions``: a :class:`ChatCompletionResponse`, or a role chunk then chunks of
    :class:`ChatCompletionStreamResponse`."""

    id_prefix = "chatcmpl"
    stream_type = ChatCompletionStreamResponse

    def response(self, output: GenerationOutput, req: ChatCompletionRequest, n_logprobs: int | None) -> ChatCompletionResponse:
        return ChatCompletionResponse(
            id=new_id(self.id_prefix),
            created=int(time.time()),
            model=self.model_name,
            choices=[
                ChatCompletionResponseChoice(
                    index=0,
                    message=ChatMessageOut(content=output.text),
                    logprobs=chat_logprobs(output.steps, n_logprobs or 0) if n_logprobs is not None else None,
                    finish_reason=FinishReason(output.finish_reason),
                )
            ],
            usage=usage_of([output]),
            unite=self.unite_block([output], req.unite or UniteOptions()),
        )

    def opening(self, rid: str, created: int) -> list[StreamResponse]:
        role = ChatCompletionStreamChoice(index=0, delta=DeltaMessage(role="assistant", content=""))
        return [ChatCompletionStreamResponse(id=rid, created=created, model=self.model_name, choices=[role])]

    def stream_choice(
        self, text: str, finish: FinishReason | None, steps: Sequence[StepRecord], offset: int, n_logprobs: int | None
    ) -> ChatCompletionStreamChoice:
        return ChatCompletionStreamChoice(
            index=0,
            delta=DeltaMessage(content=text if text or finish is None else None),
            logprobs=chat_logprobs(steps, n_logprobs or 0) if n_logprobs is not None else None,
            finish_reason=finish,
        )


class TokenizerBodies(Bodies):
    """vLLM's tokenizer routes (``/tokenize``, ``/detokenize``, ``/tokenizer_info``), in the
    reference member's tokens (the primary, else the first member)."""

    def detokenize_ids(self, ids: Sequence[int], param: str) -> bytes:
        """Token ids of the reference member as the bytes they spell (400 for an id out of range)."""
        ref = reference_member(self.ensemble)
        n = len(ref.vocab)
        bad = [t for t in ids if not 0 <= t < n]
        if bad:
            raise APIError(400, f"token id {bad[0]} is out of range for {ref.name}'s vocabulary (0..{n - 1})", param=param)
        if not ids:
            raise APIError(400, "a token-id prompt must not be empty", param=param)
        text = ref.vocab.decode(ids)
        if not text and param == "prompt":
            raise APIError(
                400,
                f"the token ids {list(ids)[:8]}{' ...' if len(ids) > 8 else ''} are all control tokens of {ref.name} "
                "(BOS, EOS, chat markers), which spell no text: give a prompt with text in it",
                param=param,
            )
        return text

    def tokenize(self, req: TokenizeRequest) -> TokenizeResponse:
        """``POST /tokenize``: the prompt in the reference member's tokens (special tokens parsed)."""
        self.check_model(req.model)
        ref = reference_member(self.ensemble)
        data = as_utf8(req.prompt, "prompt")
        if req.add_special_tokens:
            ids = list(context_track(ref, data).tokens)
        else:
            ids = ref.tokenize(data, add_bos=False, special=True) if data else []
        pieces = ref.vocab.pieces
        return TokenizeResponse(
            count=len(ids),
            max_model_len=min(m.n_ctx for m in self.ensemble.members),
            tokens=ids,
            token_strs=[pieces[t].decode("utf-8", errors="replace") for t in ids],
        )

    def detokenize(self, req: DetokenizeRequest) -> DetokenizeResponse:
        """``POST /detokenize``: what the reference member's tokens spell."""
        self.check_model(req.model)
        if not req.tokens:
            return DetokenizeResponse(prompt="")
        return DetokenizeResponse(prompt=self.detokenize_ids(req.tokens, "tokens").decode("utf-8", errors="replace"))

    def info(self) -> dict[str, Any]:
        """``GET /tokenizer_info``: the reference member's special tokens and chat template."""
        ref = reference_member(self.ensemble)
        return {
            "tokenizer_class": f"unite:{ref.name}",
            "member": ref.name,
            "bos_token": ref.bos_text or None,
            "eos_token": ref.eos_text or None,
            "pad_token": None,
            "chat_template": ref.chat_template,
            "model_max_length": min(m.n_ctx for m in self.ensemble.members),
            "vocab_size": len(ref.vocab),
        }


# -- the serving class -----------------------------------------------------------------


class OpenAIServing:
    """The endpoints' work for one ensemble served under ``model_name``.

    ``default_max_tokens`` applies when a request leaves ``max_tokens`` unset (chat) or null;
    ``defaults`` (``temperature``, ``top_p``, ``seed``, ``stop``, ``ignore_eos``: a config's
    generation block) where a request does not send the field.
    """

    def __init__(
        self,
        ensemble: Ensemble,
        scheduler: Scheduler,
        *,
        model_name: str,
        default_max_tokens: int,
        defaults: Mapping[str, Any] | None = None,
    ) -> None:
        self.ensemble = ensemble
        self.scheduler = scheduler
        self.model_name = model_name
        self.default_max_tokens = default_max_tokens
        unknown = set(defaults or {}) - {"temperature", "top_p", "seed", "stop", "ignore_eos"}
        if unknown:
            raise InvalidConfigError(f"generation defaults {', '.join(sorted(unknown))}: not request settings")
        self.defaults = dict(defaults or {})
        self.created = int(time.time())
        self.completions = CompletionBodies(ensemble, model_name)
        self.chats = ChatBodies(ensemble, model_name)
        self.tokenizer = TokenizerBodies(ensemble, model_name)

    # -- models and health ---------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "model": self.model_name,
            "members": [{"name": m.name, "n_ctx": m.n_ctx} for m in self.ensemble.members],
            "scheduler": self.scheduler.snapshot(),
        }

    def models(self) -> ModelList:
        return ModelList(data=[self.model(self.model_name)])

    def model(self, model_id: str) -> ModelCard:
        if model_id != self.model_name:
            raise model_not_found(model_id, self.model_name)
        return ModelCard(id=self.model_name, created=self.created, members=self.ensemble.names)

    # -- checks before queueing ----------------------------------------------------------

    def check_common(self, req: _Common) -> None:
        if req.model != self.model_name:
            raise model_not_found(req.model, self.model_name)
        if req.n != 1:
            raise unsupported(f"n={req.n} is not supported: an ensemble returns one choice per prompt (n=1)", "n")
        for field in ("presence_penalty", "frequency_penalty"):
            if getattr(req, field):
                raise unsupported(f"{field} is not supported (use 0)", field)
        if req.logit_bias:
            raise unsupported("logit_bias is not supported: members have different vocabularies", "logit_bias")
        if req.stream_options is not None and not req.stream:
            raise APIError(400, "stream_options needs stream=true", param="stream_options")
        if req.response_format is not None and req.response_format.get("type", "text") != "text":
            raise unsupported(
                f"response_format {req.response_format.get('type')!r} is not supported (only text)", "response_format"
            )
        for field in ("tools", "functions"):
            if getattr(req, field):
                raise unsupported(f"{field} are not supported: the ensemble generates text only", field)
        for field in ("tool_choice", "function_call"):
            if getattr(req, field) not in (None, "none", "auto"):
                raise unsupported(f"{field} is not supported: the ensemble generates text only", field)

    def check_completion(self, req: CompletionRequest) -> list[tuple[Prompt, list[int] | None]]:
        """The request's prompts, after :meth:`check_common` and the completion-only checks:
        each as text, with its token ids when it came as ids (the reference member's)."""
        self.check_common(req)
        if req.echo and req.stream:
            raise unsupported("echo is not supported with stream=true", "echo")
        if req.suffix:
            raise unsupported("suffix is not supported", "suffix")
        if req.best_of not in (None, 1):
            raise unsupported("best_of > 1 is not supported", "best_of")
        raw = req.prompt
        if isinstance(raw, str):
            entries: list[str | list[int]] = [raw]
        elif raw and all(isinstance(x, int) for x in raw):
            entries = [[int(x) for x in raw if isinstance(x, int)]]
        else:
            entries = [e if isinstance(e, str) else [int(x) for x in e] for e in raw if isinstance(e, str | list)]
        if not entries:
            raise APIError(400, "prompt must not be an empty list", param="prompt")
        if req.stream and len(entries) > 1:
            raise APIError(400, "stream=true takes one prompt, not a list", param="prompt")
        return [(e, None) if isinstance(e, str) else (self.tokenizer.detokenize_ids(e, "prompt"), e) for e in entries]

    def check_chat(self, req: ChatCompletionRequest) -> None:
        self.check_common(req)
        if req.top_logprobs is not None and not req.logprobs:
            raise APIError(400, "top_logprobs needs logprobs=true", param="top_logprobs")

    def gen_config(self, req: _Common, max_tokens: int | None) -> GenerationConfig:
        sent = req.model_fields_set

        def pick(name: str, value: Any) -> Any:  # the request's value where it sent one, else the default
            return self.defaults[name] if name in self.defaults and name not in sent else value

        try:
            return GenerationConfig(
                max_new_tokens=self.default_max_tokens if max_tokens is None else max_tokens,
                temperature=pick("temperature", req.temperature),
                top_p=pick("top_p", req.top_p),
                seed=pick("seed", req.seed),
                stop=pick("stop", req.stop_list()),
                ignore_eos=pick("ignore_eos", req.ignore_eos),
            )
        except UniteError as err:
            raise APIError(400, str(err), param="stop" if "stop" in str(err) else None) from None

    def prompt_tokens(self, prompt: Prompt, chat: bool, max_tokens: int | None, param: str) -> dict[str, int]:
        """Each member's prompt length; raises if the prompt (+ an explicit max_tokens) does not fit."""
        counts: dict[str, int] = {}
        for m in self.ensemble.members:
            try:
                n = len(start_track(m, prompt, chat=chat).tokens)
            except ContextLengthError as err:
                raise APIError(400, str(err), param=param, code="context_length_exceeded") from None
            except UniteError as err:
                raise APIError(err.http_status, str(err), param=param) from None
            if max_tokens is not None and n + max_tokens > m.n_ctx:
                raise APIError(
                    400,
                    f"{m.name}'s maximum context length is {m.n_ctx} tokens, but you requested {n + max_tokens} tokens "
                    f"({n} in the prompt, {max_tokens} for the completion); shorten the prompt or lower max_tokens",
                    param="max_tokens",
                    code="context_length_exceeded",
                )
            counts[m.name] = n
        return counts

    def submit(self, prompts: Sequence[Prompt], config: GenerationConfig, chat: bool) -> list[Job]:
        """One job per prompt, all or none.  More prompts than the queue holds could never be
        served, so that is a 400 naming the limit (a 503 would be retried by clients forever);
        503 is for a queue that other requests fill."""
        limit = self.scheduler.max_queue
        if len(prompts) > limit:
            raise APIError(
                400,
                f"the request has {len(prompts)} prompts; this server queues at most {limit} (--max-queue): "
                "send them in smaller requests",
                param="prompt",
                code="too_many_prompts",
            )
        return self.scheduler.submit_all(prompts, config, chat=chat)

    # -- the endpoints -------------------------------------------------------------------

    async def create_completion(self, req: CompletionRequest, request: Request) -> Response:
        """``POST /v1/completions``: a :class:`CompletionResponse`, or a stream of :class:`CompletionStreamResponse`."""
        entries = self.check_completion(req)
        prompts = [p for p, _ in entries]
        config = self.gen_config(req, req.max_tokens)
        for p in prompts:
            await run_in_threadpool(self.prompt_tokens, p, False, req.max_tokens, "prompt")
        jobs = self.submit(prompts, config, chat=False)
        if req.stream:
            return self.completions.streaming(jobs[0], req, req.logprobs)
        outputs = await collect_all(jobs, request)
        if outputs is None:
            return Response(status_code=499)
        echoes = None
        if req.echo:
            n_top = req.logprobs or 0
            echoes = [await run_in_threadpool(self.echo, p, ids, n_top) for p, ids in entries]
        return JSONResponse(self.completions.response(outputs, req, echoes).model_dump())

    def echo(self, prompt: Prompt, ids: list[int] | None, n_top: int) -> tuple[bytes, PromptLogprobs]:
        """The prompt's bytes and its per-token log-probabilities in the reference member's tokens."""
        ref = reference_member(self.ensemble)
        if ids is None:
            data = prompt if isinstance(prompt, bytes) else str(prompt).encode("utf-8")
            ids = list(context_track(ref, data).tokens)
        try:
            return ref.vocab.decode(ids), prompt_logprobs(self.ensemble, ids, n_top)
        except ContextLengthError as err:
            raise APIError(400, str(err), param="prompt", code="context_length_exceeded") from None

    async def create_chat_completion(self, req: ChatCompletionRequest, request: Request) -> Response:
        """``POST /v1/chat/completions``: a :class:`ChatCompletionResponse`, or a stream of chunks."""
        self.check_chat(req)
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.messages]
        config = self.gen_config(req, max_tokens)
        await run_in_threadpool(self.prompt_tokens, messages, True, max_tokens, "messages")
        (job,) = self.submit([messages], config, chat=True)
        n_logprobs = (req.top_logprobs or 0) if req.logprobs else None
        if req.stream:
            return self.chats.streaming(job, req, n_logprobs)
        outputs = await collect_all([job], request)
        if outputs is None:
            return Response(status_code=499)
        return JSONResponse(self.chats.response(outputs[0], req, n_logprobs).model_dump())
