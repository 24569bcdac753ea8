"""The ``unite`` command line.  Each sub-command lives in its own module and registers
itself on :data:`app`; importing them here is all it takes to add one."""

from __future__ import annotations

from . import eval as _eval  # noqa: F401  (registers `unite eval`)
from . import generate as _generate  # noqa: F401  (registers `unite generate`, `unite models`)
from . import select as _select  # noqa: F401  (registers `unite select`)
from ._app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
