"""The fast tier's guard in the processes a fast-tier test starts (``tests/tiers.py`` puts
this folder on their ``PYTHONPATH`` and names the test in ``UNITE_FAST_TIER``): when
``llama_cpp`` is imported, loading weights (anything but ``vocab_only``) exits the process
with a message naming the test, so a test that loads a model in a subprocess cannot sit in
the fast tier either."""

from __future__ import annotations

import importlib.abc
import os
import sys
from typing import Any

TEST = os.environ.get("UNITE_FAST_TIER")


def _guard(module: Any) -> None:
    real_init = module.Llama.__init__

    def guarded(self: Any, *a: Any, **kw: Any) -> None:
        if not kw.get("vocab_only"):
            import contextlib

            self._stack = contextlib.ExitStack()  # what Llama.__del__ closes
            sys.stderr.write(
                f"RuntimeError: {TEST} is in the fast tier but a process it started loads "
                f"{kw.get('model_path') or a[:1]}: use a model fixture (tests/tiers.model_fixture) or mark it pytest.mark.slow\n"
            )
            os._exit(70)
        real_init(self, *a, **kw)

    module.Llama.__init__ = guarded


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != "llama_cpp.llama":
            return None
        sys.meta_path.remove(self)
        import importlib.util

        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        exec_module = loader.exec_module

        def exec_and_guard(module: Any) -> None:
            exec_module(module)
            _guard(module)

        loader.exec_module = exec_and_guard  # type: ignore[method-assign]
        return spec


if TEST:
    sys.meta_path.insert(0, _Finder())
