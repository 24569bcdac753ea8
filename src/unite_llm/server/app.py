"""An OpenAI-compatible HTTP API in front of an :class:`~unite_llm.engine.Ensemble`.

``create_app(ensemble, model_name=...)`` returns a FastAPI app with ``/v1/models``,
``/v1/completions``, ``/v1/chat/completions`` (plain JSON or server-sent events),
``/health``, vLLM's tokenizer routes (``/tokenize``, ``/detokenize``, ``/tokenizer_info``: the
reference member's tokenizer, what lm-eval's ``tokenizer_backend=remote`` reads) and the
token-attribution playground at ``/``.

This module is the HTTP shell, as vLLM's ``api_server.py`` is: the scheduler's lifetime,
the ASGI guards of :mod:`.guards` (body cap, HEAD), the error handlers, and routes of a
few lines each.  What a route does (checks before queueing, generation settings, the job,
the JSON body or the event stream) is :class:`~.serving.OpenAIServing`'s work, and the
bodies (requests and responses) are the models of :mod:`.protocol`.

Errors use OpenAI's schema ``{"error": {"message", "type", "param", "code"}}``; a bug
gives a 500 with a generic message and the traceback goes to the server log only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from importlib.resources import files
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..defaults import DEFAULT_MAX_BATCH, DEFAULT_MAX_TOKENS
from ..engine import Ensemble
from ..errors import InvalidConfigError, UniteError
from .guards import DEFAULT_MAX_REQUEST_BYTES, BodyLimit, HeadAsGet
from .protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    DetokenizeResponse,
    ModelCard,
    ModelList,
    TokenizeRequest,
    TokenizeResponse,
)
from .scheduler import EngineRunner, OverloadedError, Runner, Scheduler
from .serving import APIError, OpenAIServing, api_error

STATIC = files("unite_llm") / "server" / "static"


def validation_error(err: RequestValidationError) -> APIError:
    """pydantic's complaint as OpenAI's error: 400 for a body that is not JSON, else 422 naming the first field."""
    problems = err.errors()
    first = problems[0] if problems else {}
    if first.get("type") == "json_invalid":
        return APIError(400, f"the request body is not valid JSON: {first.get('msg', '')}", code="invalid_json")
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    msgs = "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg')}" for e in problems[:5]
    )
    return APIError(422, f"invalid request: {msgs}", param=".".join(loc) or None, code="invalid_value")


def add_error_handlers(app: FastAPI) -> None:
    """Every error, ours or the framework's, as OpenAI's error schema."""

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
        return validation_error(err).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if err.status_code == 404 else "invalid_request_error"
        return APIError(err.status_code, f"{request.method} {request.url.path}: {err.detail}", type=kind).response()

    @app.exception_handler(Exception)
    async def _bug(request: Request, err: Exception) -> JSONResponse:
        return api_error(err).response()


def create_app(
    ensemble: Ensemble,
    model_name: str | None = None,
    *,
    max_queue: int = 64,
    default_max_tokens: int = DEFAULT_MAX_TOKENS,
    runner: Runner | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    close_ensemble: bool = False,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    generation_defaults: Mapping[str, Any] | None = None,
) -> FastAPI:
    """The API for ``ensemble``, served under ``model_name`` (default: the members joined by ``+``).

    ``max_queue`` bounds the requests waiting for the worker (more get 503);
    ``default_max_tokens`` applies when a request leaves ``max_tokens`` unset (chat) or null.
    ``max_batch > 1`` serves by continuous batching where the members decode several
    sequences at once (else one request at a time; both :class:`EngineRunner`);
    ``runner`` replaces it (the defaults are ``unite serve``'s, :mod:`unite_llm.defaults`).
    ``generation_defaults`` (a config's ``generation`` block: ``temperature``, ``top_p``,
    ``seed``, ``stop``, ``ignore_eos``) apply where a request does not set the field.
    ``max_request_bytes`` caps a request body (413 beyond it, before anything is parsed);
    every GET route also answers HEAD.
    """
    if max_request_bytes < 1:
        raise InvalidConfigError(f"--max-request-bytes must be >= 1, got {max_request_bytes}")
    name = model_name or "+".join(ensemble.names)
    if runner is None:
        runner = EngineRunner(ensemble, max_batch)
    scheduler = Scheduler(runner, max_queue=max_queue)
    serving = OpenAIServing(
        ensemble, scheduler, model_name=name, default_max_tokens=default_max_tokens, defaults=generation_defaults
    )

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
    app.state.serving = serving
    add_error_handlers(app)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return serving.health()

    @app.get("/v1/models")
    async def list_models() -> ModelList:
        return serving.models()

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> ModelCard:
        return serving.model(model_id)

    @app.post("/v1/completions", response_model=None)
    async def completions(req: CompletionRequest, request: Request) -> Response:
        return await serving.create_completion(req, request)

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(req: ChatCompletionRequest, request: Request) -> Response:
        return await serving.create_chat_completion(req, request)

    @app.post("/tokenize")
    async def tokenize(req: TokenizeRequest) -> TokenizeResponse:
        return await run_in_threadpool(serving.tokenizer.tokenize, req)

    @app.post("/detokenize")
    async def detokenize(req: DetokenizeRequest) -> DetokenizeResponse:
        return serving.tokenizer.detokenize(req)

    @app.get("/tokenizer_info")
    async def tokenizer_info() -> dict[str, Any]:
        return serving.tokenizer.info()

    @app.get("/", include_in_schema=False)
    async def playground() -> FileResponse:
        return FileResponse(str(STATIC / "playground.html"), media_type="text/html")

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    return app
