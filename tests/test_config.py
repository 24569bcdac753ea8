"""Ensemble config files (issue 28 items 8, 9, 11): TOML written as TOML, an alias bomb refused
at once, files that are not UTF-8 and unknown member options as one-line errors; and a property
test: any config document gives an EnsembleConfig or an InvalidConfigError, nothing else."""

from __future__ import annotations

import json
import time
import tomllib
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unite_llm.config import EnsembleConfig
from unite_llm.errors import InvalidConfigError
from unite_llm.members import load_member

from .test_eval_tasks import alias_bomb

SELECTED = EnsembleConfig(
    members=["smollm2-135m-instruct", "gemma3-270m"],
    weights=[0.6, 0.4],
    primary="smollm2-135m-instruct",
    generation={"max_new_tokens": 2, "stop": ["\n"]},
    notes={"made_by": "unite select", "decisions": [{"candidate": "a", "ci95": None, "score": 50.0}], "gap": None},
)


@pytest.mark.parametrize("suffix", [".toml", ".yaml", ".yml", ".json"])
def test_write_reads_back_in_every_format(tmp_path: Path, suffix: str) -> None:
    path = SELECTED.write(tmp_path / f"ens{suffix}")
    back = EnsembleConfig.read(path)
    assert back.members == SELECTED.members and back.weights == SELECTED.weights and back.generation == SELECTED.generation
    if suffix == ".toml":
        tomllib.loads(path.read_text(encoding="utf-8"))  # TOML, not JSON in a .toml file


@pytest.mark.parametrize("name", ["ens.txt", "ens", "ens.ini"])
def test_write_refuses_a_suffix_it_cannot_read_back(tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidConfigError, match=r"use one of \.json, \.yaml, \.yml, \.toml"):
        SELECTED.write(tmp_path / name)
    assert not (tmp_path / name).exists()


def test_write_to_a_directory_or_under_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "d.json").mkdir()
    with pytest.raises(InvalidConfigError, match="is a directory"):
        EnsembleConfig.check_writable(tmp_path / "d.json")
    (tmp_path / "f").write_text("")
    with pytest.raises(InvalidConfigError, match="not a writable directory"):
        EnsembleConfig.check_writable(tmp_path / "f" / "ens.yaml")


def test_an_alias_bomb_config_is_refused_at_once(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(
        "members: [smollm2-135m-instruct]\nnotes:\n" + "".join("  " + line + "\n" for line in alias_bomb().splitlines())
    )
    t0 = time.perf_counter()
    with pytest.raises(InvalidConfigError, match="alias bomb"):
        EnsembleConfig.read(path)
    assert time.perf_counter() - t0 < 2


@pytest.mark.parametrize("suffix", [".yaml", ".json", ".toml"])
def test_a_config_that_is_not_utf8_is_one_error(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"c{suffix}"
    path.write_bytes(b'members = ["caf\xe9"]\n' if suffix == ".toml" else b'{"members": ["caf\xe9"]}\n')
    with pytest.raises(InvalidConfigError, match=r"not UTF-8 text \(byte 0xE9"):
        EnsembleConfig.read(path)


def test_an_unknown_member_option_is_named_before_loading() -> None:
    t0 = time.perf_counter()
    with pytest.raises(InvalidConfigError, match=r"member option\(s\) bogus not understood .*n_ctx"):
        load_member("smollm2-135m-instruct", bogus=1)
    assert time.perf_counter() - t0 < 1  # refused before the model loads


# -- property: any config document parses to a config or an InvalidConfigError ------------------------

scalars = st.none() | st.booleans() | st.integers(-3, 40) | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=10)
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8
)
FIELDS = {
    "members": st.lists(st.sampled_from(["smollm2-135m-instruct", "gemma3-270m", "", "x.gguf"]), max_size=3) | values,
    "weights": st.lists(st.floats(allow_nan=True, allow_infinity=True) | st.integers(-2, 3), max_size=3) | values,
    "k": st.integers(-2, 20) | values,
    "method": st.sampled_from(["unite", "gac", "bogus"]) | values,
    "primary": values,
    "member_options": st.dictionaries(st.sampled_from(["n_ctx", "n_threads", "bogus"]), values, max_size=2) | values,
    "chat": values,
    "chat_templates": values,
    "parallel": values,
    "ray_address": values,
    "generation": st.dictionaries(st.sampled_from(["max_new_tokens", "stop", "temperature"]), values, max_size=2) | values,
    "notes": values,
    "bogus": values,
}


@st.composite
def documents(draw) -> dict:
    doc: dict = {"members": ["smollm2-135m-instruct"]}
    for key in draw(st.lists(st.sampled_from(sorted(FIELDS)), max_size=5, unique=True)):
        doc[key] = draw(FIELDS[key])
    return doc


@settings(max_examples=200, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=documents(), suffix=st.sampled_from([".yaml", ".json"]))
def test_any_config_document_parses_or_raises_invalid_config(tmp_path_factory, doc: dict, suffix: str) -> None:
    """Derandomized (hypothesis' fixed seed), 200 examples, through the file reader as a user's file goes."""
    path = tmp_path_factory.mktemp("cfg") / f"c{suffix}"
    text = yaml.safe_dump(doc, allow_unicode=True) if suffix == ".yaml" else json.dumps(doc, allow_nan=True)
    path.write_text(text, encoding="utf-8")
    try:
        cfg = EnsembleConfig.read(path)
    except InvalidConfigError:
        return
    assert isinstance(cfg, EnsembleConfig) and cfg.members
    assert cfg.weights is None or all(w > 0 and w != float("inf") for w in cfg.weights)
    cfg.ensemble_kwargs()
