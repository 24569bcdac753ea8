"""The ``unite`` command line.  Each sub-command lives in its own module and registers
itself on :data:`app`; importing them here is all it takes to add one."""

from __future__ import annotations

import importlib
import sys
from typing import Any

from . import eval as _eval  # noqa: F401  (registers `unite eval`)
from . import generate as _generate  # noqa: F401  (registers `unite generate`, `unite models`)
from . import select as _select  # noqa: F401  (registers `unite select`)
from . import serve as _serve  # noqa: F401  (registers `unite serve`)
from ._app import app


def _click_exceptions() -> Any:
    """Click's exception classes as Typer raises them (recent Typer vendors click as ``typer._click``)."""
    try:
        return importlib.import_module("typer._click.exceptions")
    except ImportError:
        return importlib.import_module("click.exceptions")


def main(argv: list[str] | None = None) -> None:
    """``unite``: a usage error click finds (an option's value of the wrong type, an unknown
    option, a missing argument) is one ``error:`` line and exit code 2, as the errors the
    commands raise themselves are (:func:`._app.user_errors`), not a boxed usage message."""
    import typer

    cx = _click_exceptions()
    aborts = (typer.Abort, getattr(cx, "Abort", typer.Abort))
    try:
        rv = app(args=argv, standalone_mode=False)
    except cx.NoArgsIsHelpError as err:  # `unite` alone: the help (Typer has printed it already)
        if err.format_message().strip():
            err.show()
        sys.exit(err.exit_code)
    except cx.ClickException as err:  # UsageError, BadParameter, NoSuchOption, FileError, ...
        ctx = getattr(err, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if isinstance(err, cx.UsageError) and ctx is not None else ""
        message = " ".join(err.format_message().split())
        typer.echo(f"error: {message}{hint}", err=True)
        sys.exit(err.exit_code)
    except aborts:
        typer.echo("aborted", err=True)
        sys.exit(1)
    sys.exit(rv if isinstance(rv, int) and not isinstance(rv, bool) else 0)


__all__ = ["app", "main"]
