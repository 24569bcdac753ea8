"""An OpenAI-compatible HTTP API in front of an :class:`~unite_llm.engine.Ensemble`.

``create_app(ensemble, model_name=...)`` returns a FastAPI app with ``/v1/models``,
``/v1/completions``, ``/v1/chat/completions`` (plain JSON or server-sent events),
``/health`` and the token-attribution playground at ``/``.

Every request is checked *before* it is queued (model name, unsupported settings,
prompt length against each member's context), so a bad request costs no generation
time and always gets a proper HTTP status rather than an error in the middle of a
stream.  Errors use OpenAI's schema ``{"error": {"message", "type", "param", "code"}}``;
a bug gives a 500 with a generic message and the traceback goes to the server log
only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from importlib.resources import files
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..engine import Ensemble, GenerationOutput, StepRecord, StreamChunk
from ..errors import ContextLengthError, InvalidConfigError, ModelNotFoundError, UniteError
from ..prompts import Prompt, start_track
from ..sampling import GenerationConfig
from .guards import DEFAULT_MAX_REQUEST_BYTES, BodyLimit, HeadAsGet
from .scheduler import Job, OverloadedError, Runner, Scheduler, SerialRunner
from .schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    ErrorBody,
    ErrorDetail,
    ModelCard,
    ModelList,
    UniteOptions,
    Usage,
    _Common,
)

log = logging.getLogger("unite_llm.server")

STATIC = files("unite_llm") / "server" / "static"


class APIError(Exception):
    """An error with its HTTP status and OpenAI error fields."""

    def __init__(
        self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return ErrorBody(error=ErrorDetail(message=self.message, type=self.type, param=self.param, code=self.code)).model_dump()

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


def api_error(err: BaseException) -> APIError:
    """Any exception as an :class:`APIError`: user errors keep their message, bugs do not."""
    if isinstance(err, APIError):
        return err
    if isinstance(err, OverloadedError):
        return APIError(503, str(err), type="server_error", code="server_overloaded")
    if isinstance(err, UniteError):
        code = {ContextLengthError: "context_length_exceeded", ModelNotFoundError: "model_not_found"}.get(type(err))
        return APIError(err.http_status, str(err), type="invalid_request_error", code=code)
    log.error("internal error", exc_info=err)
    return APIError(500, "internal server error (see the server log)", type="server_error", code="internal_error")


class ClientGone(Exception):
    """The client closed its connection while its request waited or ran."""


# -- building responses ---------------------------------------------------------------


def _new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def _logprob(p: float) -> float:
    return math.log(p) if p > 0 else -9999.0


def _text_steps(steps: Sequence[StepRecord]) -> list[StepRecord]:
    """The steps that appended text (END is not a token of the output)."""
    return [s for s in steps if s.chosen != "<END>"]


def _top(step: StepRecord, n: int) -> list[dict[str, Any]]:
    ranked = sorted(step.union, key=lambda c: -c["prob"])[:n]
    return [c for c in ranked if c["text"] != "<END>"]


def completion_logprobs(steps: Sequence[StepRecord], n_top: int, offset: int = 0) -> dict[str, Any]:
    """OpenAI's legacy completions ``logprobs`` object: the ensemble probability of each piece."""
    tokens, lps, tops, offsets = [], [], [], []
    for s in _text_steps(steps):
        tokens.append(s.chosen)
        lps.append(_logprob(s.prob))
        tops.append({c["text"]: _logprob(c["prob"]) for c in _top(s, n_top)} if n_top else None)
        offsets.append(offset)
        offset += len(s.chosen)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops if n_top else None, "text_offset": offsets}


def chat_logprobs(steps: Sequence[StepRecord], n_top: int) -> list[dict[str, Any]]:
    """OpenAI's chat ``logprobs.content`` list."""

    def entry(text: str, p: float) -> dict[str, Any]:
        return {"token": text, "logprob": _logprob(p), "bytes": list(text.encode("utf-8"))}

    return [
        {**entry(s.chosen, s.prob), "top_logprobs": [entry(c["text"], c["prob"]) for c in _top(s, n_top)]}
        for s in _text_steps(steps)
    ]


def step_json(step: StepRecord, opts: UniteOptions) -> dict[str, Any]:
    return step.to_dict(full=opts.union)


def usage_of(outputs: Sequence[GenerationOutput]) -> Usage:
    prompt = sum(max(o.prompt_tokens.values(), default=0) for o in outputs)
    completion = sum(len(_text_steps(o.steps)) for o in outputs)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


# -- the app ---------------------------------------------------------------------------


def create_app(
    ensemble: Ensemble,
    model_name: str | None = None,
    *,
    max_queue: int = 64,
    default_max_tokens: int = 512,
    runner: Runner | None = None,
    close_ensemble: bool = False,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
) -> FastAPI:
    """The API for ``ensemble``, served under ``model_name`` (default: the members joined by ``+``).

    ``max_queue`` bounds the requests waiting for the worker (more get 503);
    ``default_max_tokens`` applies when a request leaves ``max_tokens`` unset (chat) or null.
    ``runner`` replaces the one-at-a-time :class:`SerialRunner` (e.g. with a batching one).
    ``max_request_bytes`` caps a request body (413 beyond it, before anything is parsed);
    every GET route also answers HEAD.
    """
    if max_request_bytes < 1:
        raise InvalidConfigError(f"--max-request-bytes must be >= 1, got {max_request_bytes}")
    name = model_name or "+".join(ensemble.names)
    scheduler = Scheduler(runner or SerialRunner(ensemble), max_queue=max_queue)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        scheduler.start()
        try:
            yield
        finally:
            scheduler.stop()
            if close_ensemble:
                ensemble.close()

    app = FastAPI(title="unite-llm", summary="OpenAI-compatible API for a UniTE ensemble", lifespan=lifespan)
    app.add_middleware(BodyLimit, max_bytes=max_request_bytes)
    app.add_middleware(HeadAsGet)
    app.state.scheduler = scheduler
    app.state.ensemble = ensemble
    app.state.model_name = name

    # -- errors -----------------------------------------------------------------------

    @app.exception_handler(APIError)
    async def _api_error(request: Request, err: APIError) -> JSONResponse:
        return err.response()

    @app.exception_handler(UniteError)
    async def _unite_error(request: Request, err: UniteError) -> JSONResponse:
        return api_error(err).response()

    @app.exception_handler(OverloadedError)
    async def _overloaded(request: Request, err: OverloadedError) -> JSONResponse:
        return api_error(err).response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        problems = err.errors()
        first = problems[0] if problems else {}
        if first.get("type") == "json_invalid":
            return APIError(400, f"the request body is not valid JSON: {first.get('msg', '')}", code="invalid_json").response()
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        msgs = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg')}" for e in problems[:5]
        )
        return APIError(422, f"invalid request: {msgs}", param=param, code="invalid_value").response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if err.status_code == 404 else "invalid_request_error"
        return APIError(err.status_code, f"{request.method} {request.url.path}: {err.detail}", type=kind).response()

    @app.exception_handler(Exception)
    async def _bug(request: Request, err: Exception) -> JSONResponse:
        return api_error(err).response()

    # -- checks before queueing ---------------------------------------------------------

    def check_common(req: _Common) -> None:
        if req.model != name:
            raise APIError(
                404, f"the model {req.model!r} does not exist; this server serves {name!r}", param="model", code="model_not_found"
            )
        if req.n != 1:
            raise APIError(
                400,
                f"n={req.n} is not supported: an ensemble returns one choice per prompt (n=1)",
                param="n",
                code="unsupported_value",
            )
        for field in ("presence_penalty", "frequency_penalty"):
            if getattr(req, field):
                raise APIError(400, f"{field} is not supported (use 0)", param=field, code="unsupported_value")
        if req.logit_bias:
            raise APIError(
                400,
                "logit_bias is not supported: members have different vocabularies",
                param="logit_bias",
                code="unsupported_value",
            )
        if req.stream_options is not None and not req.stream:
            raise APIError(400, "stream_options needs stream=true", param="stream_options")

    def gen_config(req: _Common, max_tokens: int | None) -> GenerationConfig:
        try:
            return GenerationConfig(
                max_new_tokens=default_max_tokens if max_tokens is None else max_tokens,
                temperature=req.temperature,
                top_p=req.top_p,
                seed=req.seed,
                stop=req.stop_list(),
                ignore_eos=req.ignore_eos,
            )
        except UniteError as err:
            raise APIError(400, str(err), param="stop" if "stop" in str(err) else None) from None

    def prompt_tokens(prompt: Prompt, chat: bool, max_tokens: int | None, param: str) -> dict[str, int]:
        """Each member's prompt length; raises if the prompt (+ an explicit max_tokens) does not fit."""
        counts = {}
        for m in ensemble.members:
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

    def submit(prompts: Sequence[Prompt], config: GenerationConfig, chat: bool) -> list[Job]:
        jobs: list[Job] = []
        try:
            for p in prompts:
                jobs.append(scheduler.submit(p, config, chat=chat))
        except OverloadedError:
            for j in jobs:
                j.cancel()
            raise
        return jobs

    async def next_event(job: Job, request: Request | None, getter: list[asyncio.Task]) -> tuple[str, Any]:
        """The job's next event; with ``request``, checks every 0.25 s that the client is still there."""
        if not getter:
            getter.append(asyncio.ensure_future(job.events.get()))
        while True:
            done, _ = await asyncio.wait(getter, timeout=0.25 if request is not None else None)
            if done:
                return getter.pop().result()
            if request is not None and await request.is_disconnected():
                raise ClientGone

    async def collect(job: Job, request: Request) -> GenerationOutput:
        getter: list[asyncio.Task] = []
        final: GenerationOutput | None = None
        try:
            while True:
                kind, payload = await next_event(job, request, getter)
                if kind == "error":
                    raise payload
                if kind == "chunk" and payload.output is not None:
                    final = payload.output
                elif kind == "done":
                    assert final is not None, "the worker finished a job without its final chunk"
                    return final
        finally:
            for t in getter:
                t.cancel()

    async def collect_all(jobs: list[Job], request: Request) -> list[GenerationOutput] | None:
        try:
            return [await collect(j, request) for j in jobs]
        except ClientGone:
            return None
        finally:
            for j in jobs:
                j.cancel()  # no-op for finished jobs; frees the worker if we stopped early

    def unite_block(outputs: Sequence[GenerationOutput], opts: UniteOptions) -> dict[str, Any]:
        return {
            "members": ensemble.names,
            "weights": [float(w) for w in ensemble.weights],
            "choices": [
                {
                    "index": i,
                    "prompt_tokens": o.prompt_tokens,
                    "steps": [step_json(s, opts) for s in o.steps],
                    "timing": o.to_dict()["timing"],
                }
                for i, o in enumerate(outputs)
            ],
        }

    def sse(data: dict[str, Any] | str) -> str:
        return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"

    async def event_stream(job: Job, req: _Common, *, chat: bool, n_logprobs: int | None) -> AsyncIterator[str]:
        """Server-sent events for one job; closing it (client gone) cancels the job."""
        rid = _new_id("chatcmpl" if chat else "cmpl")
        obj = "chat.completion.chunk" if chat else "text_completion"
        opts = req.unite or UniteOptions()
        base = {"id": rid, "object": obj, "created": int(time.time()), "model": name}
        pending: list[StepRecord] = []
        sent_index = -1
        offset = 0
        getter: list[asyncio.Task] = []

        def chunk_json(text: str, finish: str | None) -> dict[str, Any]:
            nonlocal offset
            choice: dict[str, Any] = {"index": 0}
            if chat:
                choice["delta"] = {"content": text} if text or finish is None else {}
                choice["logprobs"] = {"content": chat_logprobs(pending, n_logprobs or 0)} if n_logprobs is not None else None
            else:
                choice["text"] = text
                choice["logprobs"] = completion_logprobs(pending, n_logprobs or 0, offset) if n_logprobs is not None else None
            choice["finish_reason"] = finish
            out = {**base, "choices": [choice]}
            if opts.wanted:
                out["unite"] = {"steps": [step_json(s, opts) for s in pending]}
            offset += len(text)
            pending.clear()
            return out

        try:
            if chat:
                yield sse(
                    {
                        **base,
                        "choices": [
                            {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
                        ],
                    }
                )
            while True:
                kind, payload = await next_event(job, None, getter)
                if kind == "error":
                    yield sse(api_error(payload).body())
                    break
                if kind == "done":
                    break
                chunk: StreamChunk = payload
                if chunk.output is None:
                    assert chunk.step is not None
                    pending.append(chunk.step)
                    sent_index = chunk.step.index
                    if chunk.text:
                        yield sse(chunk_json(chunk.text, None))
                    continue
                out = chunk.output
                pending.extend(s for s in out.steps if s.index > sent_index)
                final = chunk_json(chunk.text, out.finish_reason)
                if opts.wanted:
                    final["unite"] |= {
                        "members": ensemble.names,
                        "prompt_tokens": out.prompt_tokens,
                        "timing": out.to_dict()["timing"],
                    }
                yield sse(final)
                if req.stream_options is not None and req.stream_options.include_usage:
                    yield sse({**base, "choices": [], "usage": usage_of([out]).model_dump()})
            yield sse("[DONE]")
        finally:
            job.cancel()  # no-op once finished; frees the worker when the client went away
            for t in getter:
                t.cancel()

    def streaming(job: Job, req: _Common, *, chat: bool, n_logprobs: int | None) -> StreamingResponse:
        return StreamingResponse(
            event_stream(job, req, chat=chat, n_logprobs=n_logprobs),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    # -- routes -------------------------------------------------------------------------

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": name,
            "members": [{"name": m.name, "n_ctx": m.n_ctx} for m in ensemble.members],
            "scheduler": scheduler.snapshot(),
        }

    @app.get("/v1/models")
    async def list_models() -> ModelList:
        return ModelList(data=[ModelCard(id=name, created=created, members=ensemble.names)])

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> ModelCard:
        if model_id != name:
            raise APIError(
                404, f"the model {model_id!r} does not exist; this server serves {name!r}", param="model", code="model_not_found"
            )
        return ModelCard(id=name, created=created, members=ensemble.names)

    @app.post("/v1/completions", response_model=None)
    async def completions(req: CompletionRequest, request: Request) -> Response | dict[str, Any]:
        check_common(req)
        if req.echo:
            raise APIError(400, "echo is not supported", param="echo", code="unsupported_value")
        if req.suffix:
            raise APIError(400, "suffix is not supported", param="suffix", code="unsupported_value")
        if req.best_of not in (None, 1):
            raise APIError(400, "best_of > 1 is not supported", param="best_of", code="unsupported_value")
        prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
        if not prompts:
            raise APIError(400, "prompt must not be an empty list", param="prompt")
        if not all(isinstance(p, str) for p in prompts):
            raise APIError(
                400,
                "token-id prompts are not supported: the members have different tokenizers; send text",
                param="prompt",
                code="unsupported_value",
            )
        if req.stream and len(prompts) > 1:
            raise APIError(400, "stream=true takes one prompt, not a list", param="prompt")
        config = gen_config(req, req.max_tokens)
        for p in prompts:
            await run_in_threadpool(prompt_tokens, p, False, req.max_tokens, "prompt")
        jobs = submit(prompts, config, chat=False)
        if req.stream:
            return streaming(jobs[0], req, chat=False, n_logprobs=req.logprobs)
        outputs = await collect_all(jobs, request)
        if outputs is None:
            return Response(status_code=499)
        opts = req.unite or UniteOptions()
        body: dict[str, Any] = {
            "id": _new_id("cmpl"),
            "object": "text_completion",
            "created": int(time.time()),
            "model": name,
            "choices": [
                {
                    "index": i,
                    "text": o.text,
                    "logprobs": completion_logprobs(o.steps, req.logprobs) if req.logprobs is not None else None,
                    "finish_reason": o.finish_reason,
                }
                for i, o in enumerate(outputs)
            ],
            "usage": usage_of(outputs).model_dump(),
        }
        if opts.wanted:
            body["unite"] = unite_block(outputs, opts)
        return body

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(req: ChatCompletionRequest, request: Request) -> Response | dict[str, Any]:
        check_common(req)
        if req.top_logprobs is not None and not req.logprobs:
            raise APIError(400, "top_logprobs needs logprobs=true", param="top_logprobs")
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.messages]
        config = gen_config(req, max_tokens)
        await run_in_threadpool(prompt_tokens, messages, True, max_tokens, "messages")
        (job,) = submit([messages], config, chat=True)
        n_logprobs = (req.top_logprobs or 0) if req.logprobs else None
        if req.stream:
            return streaming(job, req, chat=True, n_logprobs=n_logprobs)
        outputs = await collect_all([job], request)
        if outputs is None:
            return Response(status_code=499)
        (o,) = outputs
        opts = req.unite or UniteOptions()
        body: dict[str, Any] = {
            "id": _new_id("chatcmpl"),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": o.text},
                    "logprobs": {"content": chat_logprobs(o.steps, n_logprobs or 0)} if n_logprobs is not None else None,
                    "finish_reason": o.finish_reason,
                }
            ],
            "usage": usage_of(outputs).model_dump(),
        }
        if opts.wanted:
            body["unite"] = unite_block(outputs, opts)
        return body

    # -- the playground ------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    async def playground() -> FileResponse:
        return FileResponse(str(STATIC / "playground.html"), media_type="text/html")

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    return app
