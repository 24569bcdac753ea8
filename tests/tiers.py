"""The two test tiers, set by what a test uses.

A test is **slow** when it loads a real model: it uses a fixture made with
:func:`model_fixture` (directly or through another fixture), or it loads one itself and
says so with ``@pytest.mark.slow``.  Every other test is in the fast tier
(``pytest -m "not slow"``, well under a minute), and :func:`forbid_models` makes that
true: in a fast-tier test, or in a Python process it starts, loading llama.cpp weights
fails with a message that says which mark the test lacks.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

LOADS_MODEL = "_unite_loads_model"
SITE = Path(__file__).resolve().parent / "fast_tier_site"


def model_fixture(*args: Any, **kwargs: Any) -> Any:
    """``pytest.fixture`` for a fixture that loads a real model (or starts something that
    does: a server, a Ray cluster): every test that uses it is in the slow tier."""

    def wrap(fn: Callable[..., Any]) -> Any:
        setattr(fn, LOADS_MODEL, True)
        return pytest.fixture(*args, **kwargs)(fn)

    if len(args) == 1 and callable(args[0]) and not kwargs:  # bare @model_fixture
        fn, args = args[0], ()
        return wrap(fn)
    return wrap


def loads_model(item: pytest.Item) -> bool:
    """Whether one of the fixtures ``item`` uses (at any depth) is a :func:`model_fixture`."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    for name in item.fixturenames:  # type: ignore[attr-defined]
        for fixturedef in info.name2fixturedefs.get(name, ()):
            if getattr(fixturedef.func, LOADS_MODEL, False):
                return True
    return False


def set_tiers(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("slow") is None and loads_model(item):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def forbid_models(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """In a fast-tier test, loading a model's weights is an error (a vocabulary alone is fine)."""
    if request.node.get_closest_marker("slow") is None:
        import llama_cpp

        real_init = llama_cpp.Llama.__init__

        def guarded(self: Any, *a: Any, **kw: Any) -> None:
            if not kw.get("vocab_only"):
                self._stack = contextlib.ExitStack()  # what Llama.__del__ closes
                raise RuntimeError(
                    f"{request.node.nodeid} is in the fast tier but loads {kw.get('model_path') or a[:1]}: "
                    "use a model fixture (tests/tiers.model_fixture) or mark it pytest.mark.slow"
                )
            real_init(self, *a, **kw)

        monkeypatch.setattr(llama_cpp.Llama, "__init__", guarded)
        # The same guard in any Python process the test starts (fast_tier_site/sitecustomize.py).
        monkeypatch.setenv("UNITE_FAST_TIER", request.node.nodeid)
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(SITE), os.environ.get("PYTHONPATH")])))
    yield
