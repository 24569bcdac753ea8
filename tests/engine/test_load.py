"""``Ensemble.load`` checks what it can before any model loads (issue 28 item 13): one string is
one spec (not its characters), weights and an index or name of ``--primary`` are refused before
the first member loads, and one GGUF given by alias and by path is refused like one alias twice."""

from __future__ import annotations

import pytest

from tests.fakes import FakeMember
from unite_llm import loading
from unite_llm.engine import Ensemble
from unite_llm.errors import InvalidConfigError


@pytest.fixture()
def loaded(monkeypatch) -> list[str]:
    """Specs that reached ``load_member`` (fake members named after them)."""
    seen: list[str] = []

    def fake(spec: str, **options):
        seen.append(spec)
        m = FakeMember("left")
        m.name = spec.removesuffix(".gguf").rpartition("/")[2]
        return m

    monkeypatch.setattr(loading, "load_member", fake)
    return seen


def test_one_string_is_one_spec(loaded) -> None:
    ens = Ensemble.load("smollm2-135m-instruct")
    assert ens.names == ["smollm2-135m-instruct"] and loaded == ["smollm2-135m-instruct"]


@pytest.mark.parametrize(
    ("specs", "kwargs", "needle"),
    [
        (["a", "b"], {"weights": [1.0]}, "1 weights given for 2 members"),
        (["a", "b"], {"weights": [1.0, -1.0]}, "weights must be positive"),
        (["a", "b"], {"weights": ["x", 1]}, "weights must be positive numbers"),
        (["a", "b"], {"weights": "1,2"}, "weights must be a list of numbers"),
        (["a", "b"], {"weights": [True, 1]}, "weights must be positive numbers"),
        (["a", "b"], {"primary": 2}, "primary index 2 out of range for 2 members"),
        (["a", "b"], {"primary": "c"}, "primary 'c' is not a member"),
        (["a", "b"], {"primary": 1.5}, "primary must be a member name or index"),
        (["a", "a"], {}, "'a' is given more than once"),
        ([], {}, "at least one member"),
        (["a", ""], {}, "non-empty string"),
        (["a", 3], {}, "non-empty string, got 3"),
        (42, {}, "members must be a list of model specs"),
        (["a", "b"], {"k": 0}, "k must be"),
    ],
)
def test_bad_settings_are_refused_before_any_member_loads(loaded, specs, kwargs, needle) -> None:
    with pytest.raises(InvalidConfigError, match=needle):
        Ensemble.load(specs, **kwargs)
    assert loaded == []


def test_a_primary_named_by_its_file_stem_is_accepted(loaded) -> None:
    ens = Ensemble.load(["/models/a.gguf", "b"], primary="a", parallel=False)
    assert ens.primary == 0


def test_no_specs_is_the_default_ensemble_with_its_gate(loaded) -> None:
    """``Ensemble.load()`` is ``unite generate``'s default (its gate); members given are plain."""
    from unite_llm.models import DEFAULT_ENSEMBLE, DEFAULT_SETTINGS

    ens = Ensemble.load()
    assert loaded == list(DEFAULT_ENSEMBLE)
    assert ens.gate is not None and ens.gate.threshold == DEFAULT_SETTINGS["gate"]["threshold"]
    assert Ensemble.load(DEFAULT_ENSEMBLE, parallel=False).gate is None  # (no timed thread plan of fakes)
    assert Ensemble.load(gate=0.5).gate.threshold == 0.5
