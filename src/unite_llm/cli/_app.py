"""The shared Typer app and the rule that user errors never show a traceback."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from ..errors import UniteError

app = typer.Typer(
    name="unite",
    help="Ensemble LLMs with different tokenizers at decode time (UniTE: union top-k).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable[..., Any])


def user_errors(fn: F) -> F:
    """Turn a :class:`UniteError` into ``error: <message>`` and its exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UniteError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(err.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(name)s: %(message)s")


def parse_floats(text: str | None, what: str) -> list[float] | None:
    """``"0.6,0.4"`` -> ``[0.6, 0.4]``, with an error that names the bad item."""
    from ..errors import InvalidConfigError

    if text is None:
        return None
    out = []
    for item in text.replace(" ", "").split(","):
        try:
            out.append(float(item))
        except ValueError:
            raise InvalidConfigError(f"{what}: {item!r} is not a number") from None
    return out


def parse_gate(text: str | None) -> float | dict[str, Any] | bool | None:
    """``--gate`` text: ``0.2`` (the primary's top-1 probability), ``margin=0.1`` (top-1 minus
    top-2), ``off`` (consult every member every step); None when the flag is not given.

    ``off`` comes back as False, so that it overrides a gate from the config or the default.
    """
    from ..errors import InvalidConfigError

    if text is None:
        return None
    text = text.strip()
    if text.lower() in ("off", "none", "no"):
        return False
    signal, sep, num = text.rpartition("=")
    try:
        threshold = float(num)
    except ValueError:
        raise InvalidConfigError(f"--gate {text!r}: expected a threshold, SIGNAL=THRESHOLD (top1, margin) or off") from None
    return {"threshold": threshold, "signal": signal} if sep else threshold


def parse_weighting(text: str | None) -> list[str] | bool | None:
    """``--weighting`` text: comma-separated rules (``floor=0.6,entropy``) or ``off``."""
    if text is None:
        return None
    if text.strip().lower() in ("off", "none", "no"):
        return False
    return [r for r in text.replace(" ", "").split(",") if r]


def parse_pairs(items: list[str] | None, what: str) -> dict[str, str]:
    """``["gemma3-270m=gemma"]`` -> ``{"gemma3-270m": "gemma"}``, with an error that names a bad item."""
    from ..errors import InvalidConfigError

    out = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise InvalidConfigError(f"{what} {item!r}: expected MEMBER=VALUE")
        out[key] = value
    return out


def plan_from_flags(
    models: list[str] | None,
    config: str | None,
    *,
    k: int | None = None,
    weights: str | None = None,
    method: str | None = None,
    primary: str | None = None,
    n_ctx: int | None = None,
    threads: int | None = None,
    parallel: bool | None = None,
    ray_address: str | None = None,
    chat_templates: list[str] | None = None,
    n_seq: int | None = None,
    gate: str | None = None,
    weighting: str | None = None,
    prefix_cache: bool | None = None,
) -> Any:
    """The :class:`~unite_llm.builder.EnsemblePlan` of the command-line flags (their text parsed
    here; the rules, which config and which weights, are :func:`unite_llm.builder.plan_ensemble`'s).
    Nothing is loaded: every model-free check has run when it returns."""
    from ..builder import plan_ensemble

    return plan_ensemble(
        config,
        members=list(models) if models else None,
        chat_templates=parse_pairs(chat_templates, "--chat-template") or None,
        k=k,
        weights=parse_floats(weights, "--weights"),
        method=method,
        primary=primary,
        n_ctx=n_ctx,
        n_threads=threads,
        parallel=parallel,
        ray_address=ray_address,
        n_seq=n_seq,
        gate=parse_gate(gate),
        weighting=parse_weighting(weighting),
        prefix_cache=prefix_cache,
    )


def build_ensemble(models: list[str] | None, config: str | None, **flags: Any) -> Any:
    """``(ensemble, plan)`` for the ``-m``/``--config`` flags and the others (:func:`plan_from_flags`)."""
    plan = plan_from_flags(models, config, **flags)
    return plan.build(), plan
