"""``unite serve``: the ensemble behind an OpenAI-compatible HTTP API."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ..defaults import DEFAULT_MAX_BATCH, DEFAULT_MAX_TOKENS
from ..errors import InvalidConfigError
from ._app import app, plan_from_flags, setup_logging, user_errors
from .generate import ChatTemplateOpt, ConfigOpt, GateOpt, ModelOpt, WeightingOpt


def check_bind(host: str, port: int) -> None:
    """Refuse an address that cannot be listened on (in use, not this machine's) with one line."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as err:
        raise InvalidConfigError(f"--host {host}: cannot resolve it ({err.strerror or err})") from None
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind(addr)
        except OSError as err:
            raise InvalidConfigError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None


@app.command()
@user_errors
def serve(
    model: ModelOpt = None,
    config: ConfigOpt = None,
    host: Annotated[str, typer.Option(help="Address to listen on (127.0.0.1: this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    model_name: Annotated[
        Optional[str], typer.Option("--model-name", help="The model id clients send (default: members joined by '+').")
    ] = None,
    k: Annotated[Optional[int], typer.Option("--k", help="Top-k per member (paper: 10).")] = None,
    weights: Annotated[Optional[str], typer.Option(help="Comma-separated member weights, e.g. 0.6,0.4.")] = None,
    method: Annotated[Optional[str], typer.Option(help="Step method (unite).")] = None,
    gate: GateOpt = None,
    weighting: WeightingOpt = None,
    primary: Annotated[Optional[str], typer.Option(help="Primary member: output follows its tokens.")] = None,
    n_ctx: Annotated[Optional[int], typer.Option("--n-ctx", help="Context window per member.")] = None,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads per member.")] = None,
    chat_template: ChatTemplateOpt = None,
    max_queue: Annotated[int, typer.Option("--max-queue", help="Requests that may wait for the worker; more get HTTP 503.")] = 64,
    max_batch: Annotated[
        int,
        typer.Option(
            "--max-batch",
            help="Requests decoded together (continuous batching; llama.cpp members keep that many sequences). "
            "1: one at a time, each answer exactly what `unite generate` gives.",
        ),
    ] = DEFAULT_MAX_BATCH,
    default_max_tokens: Annotated[
        Optional[int],
        typer.Option(
            "--default-max-tokens",
            help="Completion length when a request sets no max_tokens (chat). Default: the config's max_new_tokens, else 512.",
        ),
    ] = None,
    max_request_bytes: Annotated[
        Optional[int],
        typer.Option("--max-request-bytes", help="Largest request body accepted (default 2 MiB); larger ones get HTTP 413."),
    ] = None,
    prefix_cache: Annotated[
        bool,
        typer.Option(help="Keep KV caches across requests (aligned chunks only: answers still depend on the prompt alone)."),
    ] = True,
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="Log every step to stderr.")] = False,
) -> None:
    """Serve the ensemble with an OpenAI-compatible API (/v1/completions, /v1/chat/completions) and a playground at /."""
    try:
        import uvicorn

        from ..server import create_app
        from ..server.app import DEFAULT_MAX_REQUEST_BYTES
    except ImportError as err:
        raise InvalidConfigError(f"unite serve needs the serve extra: pip install 'unite-llm[serve]' ({err})") from None
    if not 0 < port < 65536:
        raise InvalidConfigError(f"--port must be 1-65535, got {port}")
    if max_queue < 1:
        raise InvalidConfigError(f"--max-queue must be >= 1, got {max_queue}")
    if max_batch < 1:
        raise InvalidConfigError(f"--max-batch must be >= 1, got {max_batch}")
    if max_request_bytes is not None and max_request_bytes < 1:
        raise InvalidConfigError(f"--max-request-bytes must be >= 1, got {max_request_bytes}")
    if default_max_tokens is not None and default_max_tokens < 0:  # it started, then failed every chat request
        raise InvalidConfigError(f"--default-max-tokens must be >= 0, got {default_max_tokens}")
    check_bind(host, port)  # before the models load, and before "serving on ..." is printed
    setup_logging(verbose)
    plan = plan_from_flags(
        model,
        config,
        k=k,
        weights=weights,
        method=method,
        primary=primary,
        n_ctx=n_ctx,
        threads=threads,
        chat_templates=chat_template,
        n_seq=max_batch if max_batch > 1 else None,
        gate=gate,
        weighting=weighting,
        prefix_cache=prefix_cache,
    )
    # The config's generation block: defaults for what a request leaves unset.
    defaults = dict(plan.config.generation)
    config_max = defaults.pop("max_new_tokens", None)
    if default_max_tokens is None:
        default_max_tokens = DEFAULT_MAX_TOKENS if config_max is None else config_max
    ens = plan.build()
    api = create_app(
        ens,
        model_name,
        max_queue=max_queue,
        default_max_tokens=default_max_tokens,
        close_ensemble=True,
        max_batch=max_batch,
        max_request_bytes=DEFAULT_MAX_REQUEST_BYTES if max_request_bytes is None else max_request_bytes,
        generation_defaults=defaults,
    )
    typer.echo(f"serving {api.state.model_name} on http://{host}:{port}  (playground: http://{host}:{port}/)", err=True)
    uvicorn.run(api, host=host, port=port, log_level="info" if verbose else "warning")
