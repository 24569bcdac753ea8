"""Task files and their data, refused up front with one clear error (issue 28 items 3, 6, 7,
9, 11, 12), and a property test: any task YAML loads or raises a UniteError, nothing else.
Fast tier: no model runs (evaluations use fake members)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fakes import FakeMember
from unite_llm.engine import Ensemble
from unite_llm.errors import InvalidConfigError, InvalidInputError, UniteError
from unite_llm.eval import evaluate_systems
from unite_llm.eval.runner import System
from unite_llm.eval.tasks import Task
from unite_llm.select import run_selection

TASK = {
    "name": "capitals",
    "data": [{"path": "capitals.jsonl"}],
    "prompt": "The capital of {{ country }} is",
    "gold": "capital",
    "id": "country",
    "extract": {"kind": "first_word"},
    "metric": "normalized_exact",
    "generation": {"max_new_tokens": 3, "stop": ["\n"]},
}
ROWS = [{"country": "France", "capital": "Paris"}, {"country": "Italy", "capital": "Rome"}]


def write_task(folder: Path, rows=ROWS, **over) -> Path:
    (folder / "capitals.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    path = folder / "capitals.yaml"
    path.write_text(yaml.safe_dump({**TASK, **over}, allow_unicode=True), encoding="utf-8")
    return path


def fake_system() -> System:
    return System("fake", "single", Ensemble([FakeMember("left")]))


def test_a_stop_string_is_one_stop_string(tmp_path: Path) -> None:
    task = Task.load(str(write_task(tmp_path, generation={"max_new_tokens": 3, "stop": "Answer"})))
    assert task.stop == ["Answer"]  # not ["A", "n", "s", "w", "e", "r"]


@pytest.mark.parametrize(
    ("over", "needle"),
    [
        ({"generation": {"max_new_tokens": "abc"}}, "max_new_tokens must be an integer"),
        ({"generation": {"max_new_tokens": -1}}, "max_new_tokens must be >= 0"),
        ({"generation": {"stop": [""]}}, "stop strings must not be empty"),
        ({"generation": {"temprature": 0.5}}, "unknown generation settings"),
        ({"fewshot": {"examples": [{"country": "Peru", "capital": "Lima"}], "n": -3}}, "fewshot.n"),
        ({"extract": {"kind": "regex", "pattern": "(unclosed"}}, "invalid pattern"),
        ({"extract": {"kind": "regex", "pattern": 3}}, "pattern must be a string"),
        ({"extract": {"kind": "letter", "letters": 5}}, "extraction 'letter'"),
    ],
)
def test_bad_task_settings_fail_at_load(tmp_path: Path, over, needle) -> None:
    with pytest.raises(InvalidConfigError, match=needle):
        Task.load(str(write_task(tmp_path, **over)))


def test_duplicate_item_ids_are_refused_naming_them(tmp_path: Path) -> None:
    rows = [*ROWS, {"country": "France", "capital": "Paris"}, {"country": "Italy", "capital": "Roma"}]
    task = Task.load(str(write_task(tmp_path, rows)))
    with pytest.raises(InvalidInputError, match=r"'France', 'Italy' occur more than once"):
        task.items()


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b'["not", "an", "object"]\n', "a JSONL line must be an object, got list"),
        (b'{"country": "France", "capital": "Paris"}\n42\n', "capitals.jsonl:2: a JSONL line must be an object"),
        (b'{"country": "Fran\xe7e", "capital": "Paris"}\n', "not UTF-8 text (byte 0xE7"),
    ],
)
def test_data_that_is_not_json_objects_or_not_utf8_is_one_error(tmp_path: Path, content: bytes, needle: str) -> None:
    path = write_task(tmp_path)
    (tmp_path / "capitals.jsonl").write_bytes(content)
    with pytest.raises(InvalidInputError, match=re.escape(needle)):
        Task.load(str(path)).items()


def test_a_task_file_that_is_not_utf8_is_one_error(tmp_path: Path) -> None:
    path = write_task(tmp_path)
    path.write_bytes(path.read_bytes() + b"description: caf\xe9\n")
    with pytest.raises(InvalidConfigError, match=r"task file .* is not UTF-8 text \(byte 0xE9"):
        Task.load(str(path))


def alias_bomb(levels: int = 9) -> str:
    lines = ["a0: &a0 [" + ", ".join(["lol"] * 9) + "]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_a_yaml_alias_bomb_in_a_task_file_is_refused_at_once(tmp_path: Path) -> None:
    path = write_task(tmp_path)
    path.write_text(path.read_text() + alias_bomb(), encoding="utf-8")
    t0 = time.perf_counter()
    with pytest.raises(InvalidConfigError, match="alias bomb"):
        Task.load(str(path))
    assert time.perf_counter() - t0 < 2


def test_builtin_aliases_still_load() -> None:
    """CMMLU names its 67 subjects once (``&subjects``) and refers to them."""
    task = Task.load("cmmlu")
    names = [s.hf["name"] for s in task.spec.data if s.hf]
    assert names and len(names[0]) == 67


def test_eval_of_zero_items_is_refused(tmp_path: Path) -> None:
    empty = Task.load(str(write_task(tmp_path, rows=[])))
    with pytest.raises(InvalidInputError, match="no items to evaluate"):
        evaluate_systems([empty], [fake_system()], out=tmp_path / "o", progress=False)
    task = Task.load(str(write_task(tmp_path)))
    with pytest.raises(InvalidInputError, match="no items to evaluate"):
        evaluate_systems([task], [fake_system()], limit=0, out=tmp_path / "o", progress=False)
    assert not (tmp_path / "o" / "capitals").exists()


def test_eval_limit_for_a_task_not_in_the_run_is_refused(tmp_path: Path) -> None:
    task = Task.load(str(write_task(tmp_path)))
    with pytest.raises(InvalidConfigError, match="--limit for gsm8k: not a task of this run"):
        evaluate_systems([task], [fake_system()], limit={"gsm8k": 5}, out=tmp_path / "o", progress=False)


def test_eval_out_that_is_a_file_is_refused_before_running(tmp_path: Path) -> None:
    task = Task.load(str(write_task(tmp_path)))
    (tmp_path / "o").write_text("")
    with pytest.raises(InvalidConfigError, match="not a folder"):
        evaluate_systems([task], [fake_system()], out=tmp_path / "o", progress=False)
    with pytest.raises(InvalidConfigError, match="cannot write there"):
        evaluate_systems([task], [fake_system()], out=tmp_path / "o" / "sub", progress=False)


def test_select_on_zero_items_is_refused_before_loading_a_model(tmp_path: Path) -> None:
    empty = write_task(tmp_path, rows=[])
    with pytest.raises(InvalidInputError, match="no test items to select on"):
        run_selection(["no-such-model"], str(empty), out=tmp_path / "o", progress=False)
    with pytest.raises(InvalidConfigError, match="--limit must be >= 1"):
        run_selection(["no-such-model"], str(write_task(tmp_path)), limit=0, out=tmp_path / "o", progress=False)


# -- property: any task YAML loads or raises a UniteError -------------------------------------------------

scalars = st.none() | st.booleans() | st.integers(-5, 300) | st.floats(allow_nan=True) | st.text(max_size=12)
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8
)
FIELDS = {
    "name": st.text(max_size=8) | values,
    "data": st.just([{"path": "capitals.jsonl"}])
    | st.lists(st.fixed_dictionaries({}, optional={"path": values, "fields": values}), max_size=2)
    | values,
    "prompt": st.sampled_from(["The capital of {{ country }} is", "{{ nosuch }}", "{% if %}", "{{ country | letter }}"]) | values,
    "gold": st.sampled_from(["capital", "nosuch", "capital | upper", "[capital]"]) | values,
    "id": st.sampled_from(["country", "capital[0]", "1"]) | values,
    "extract": st.fixed_dictionaries(
        {"kind": st.sampled_from(["raw", "regex", "letter", "number", "bogus"])},
        optional={"pattern": st.sampled_from(["(\\w+)", "(", "["]) | values, "letters": values},
    )
    | values,
    "metric": st.sampled_from(["exact", "normalized_exact", "bogus"]) | values,
    "generation": st.fixed_dictionaries({}, optional={"max_new_tokens": values, "stop": values}) | values,
    "fewshot": st.fixed_dictionaries({}, optional={"n": values, "examples": values, "answer": values, "text": values}) | values,
    "settings": values,
    "header": values,
}


@st.composite
def task_documents(draw) -> str:
    doc = dict(TASK)
    for key in draw(st.lists(st.sampled_from(sorted(FIELDS)), max_size=4, unique=True)):
        doc[key] = draw(FIELDS[key])
    if draw(st.booleans()):
        del doc[draw(st.sampled_from(sorted(doc)))]
    text = yaml.safe_dump(doc, allow_unicode=True)
    if draw(st.integers(0, 9)) == 0:
        text = draw(st.sampled_from(["", "- a list\n", "a: [unclosed\n", alias_bomb(), "a: &x [*x]\n", "\t:\n"]))
    return text


@settings(max_examples=150, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=task_documents(), limit=st.sampled_from([None, 0, 1, 5]))
def test_any_task_yaml_loads_or_raises_a_unite_error(tmp_path_factory, doc: str, limit) -> None:
    """Seed: derandomized (hypothesis' fixed seed for a given test), 150 examples."""
    folder = tmp_path_factory.mktemp("task")
    path = write_task(folder)
    path.write_text(doc, encoding="utf-8")
    try:
        task = Task.load(str(path))
        items = task.items(limit=limit)
    except UniteError:
        return
    for item in items:
        assert isinstance(item.prompt, str) and isinstance(item.id, str)
        task.extract("The answer is Paris")
