"""``unite eval`` against damaged input (issue 15): strict task templates, damaged result
lines and meta files on resume.  Real subprocess runs on the real SmolLM2, as in
``test_eval_resume.py``."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from unite_llm.errors import InvalidConfigError
from unite_llm.eval.runner import read_results
from unite_llm.eval.tasks import Task

from .test_eval_resume import CAPITALS, TASK_YAML, _cmd

ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}


def unite(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), env=ENV, capture_output=True, text=True, timeout=300)


def no_traceback(proc: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in proc.stderr and 'File "' not in proc.stderr, proc.stderr


@pytest.fixture()
def custom_task(tmp_path: Path) -> Path:
    (tmp_path / "capitals.jsonl").write_text("".join(json.dumps({"country": c, "capital": k}) + "\n" for c, k in CAPITALS))
    path = tmp_path / "capitals.yaml"
    path.write_text(TASK_YAML)
    return path


# -- strict templates ---------------------------------------------------------------------------


def test_undefined_template_field_names_the_field_and_the_item(custom_task: Path, tmp_path: Path) -> None:
    custom_task.write_text(TASK_YAML.replace("The capital of {{ country }} is", "The capital of {{ nosuch_field }} is"))
    with pytest.raises(InvalidConfigError, match=r"item France prompt: 'nosuch_field' is undefined") as info:
        Task.load(str(custom_task)).items()
    assert "'country'" in str(info.value)  # the fields the item does have
    proc = unite(*_cmd(custom_task, tmp_path / "o"))
    assert proc.returncode == 2, proc.stderr
    assert "'nosuch_field' is undefined" in proc.stderr and "item France" in proc.stderr
    no_traceback(proc)
    assert not (tmp_path / "o" / "capitals").exists(), "refused before anything ran"


def test_undefined_field_in_a_few_shot_answer_is_named(custom_task: Path) -> None:
    custom_task.write_text(TASK_YAML.replace('answer: " {{ capital }}"', 'answer: " {{ capitol }}"'))
    with pytest.raises(InvalidConfigError, match=r"few-shot example 0 answer: 'capitol' is undefined"):
        Task.load(str(custom_task)).items()


def test_optional_fields_in_expressions_stay_lenient() -> None:
    """Field expressions may test optional data (ARC's fifth choice): still allowed."""
    items = Task.load("arc_challenge").items(limit=5)
    assert all("Answer:" in it.prompt for it in items)


# -- damaged result lines -----------------------------------------------------------------------

GOOD = b'{"id": "a", "correct": true, "tokens": 3}\n'
LAST = b'{"id": "z", "correct": false}\n'


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (b'{"id": "b", "corr', "not valid JSON"),
        (b'["b", true]', "a JSON list, not an object"),
        (b'"just a string"', "a JSON str, not an object"),
        (b'{"correct": true}', 'no "id"'),
        (b'{"id": {"x": 1}, "correct": true}', "\"id\" is {'x': 1}, not a string"),
        (b'{"id": "b"}', '"correct" is None, not true or false'),
        (b'{"id": "b", "correct": "yes"}', "\"correct\" is 'yes', not true or false"),
        (b'{"id": "b", "correct": true, "tokens": "many"}', "\"tokens\" is 'many', not a number"),
        (b'{"id": "caf\xe9", "correct": true}', "not valid JSON (UnicodeDecodeError"),
    ],
)
def test_damaged_line_is_an_error_naming_file_and_line(tmp_path: Path, line: bytes, problem: str) -> None:
    path = tmp_path / "r.jsonl"
    data = GOOD + line + b"\n" + LAST
    path.write_bytes(data)
    with pytest.raises(InvalidConfigError) as info:
        read_results(path)
    assert f"{path}:2 is not a result line: {problem}" in str(info.value)
    assert "--drop-damaged" in str(info.value)
    assert path.read_bytes() == data, "refusing changes nothing"

    assert sorted(read_results(path, drop_damaged=True)) == ["a", "z"]
    assert path.read_bytes() == GOOD + LAST
    assert (tmp_path / "r.jsonl.damaged").read_bytes() == line + b"\n", "the damaged line is kept aside"


@pytest.mark.slow  # loads a model itself
def test_drop_damaged_on_the_cli_keeps_every_line(custom_task: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    jsonl = out / "capitals" / "smollm2-135m-instruct.jsonl"
    first = unite(*_cmd(custom_task, out), "--limit", "2")
    assert first.returncode == 0, first.stderr
    done = jsonl.read_bytes()
    junk = b'["not", "a", "result"]\n{"output": "no id"}\n'
    jsonl.write_bytes(done + junk)

    refused = unite(*_cmd(custom_task, out), "--limit", "3")
    assert refused.returncode == 2, refused.stderr
    assert f"{jsonl}:3 is not a result line: a JSON list, not an object (2 damaged lines in all)" in refused.stderr
    no_traceback(refused)
    assert jsonl.read_bytes() == done + junk

    again = unite(*_cmd(custom_task, out), "--limit", "3", "--drop-damaged")
    assert again.returncode == 0, again.stderr
    ids = [json.loads(x)["id"] for x in jsonl.read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 3, "the two finished items kept, the third one run"
    assert jsonl.read_bytes().startswith(done)
    assert jsonl.with_name(jsonl.name + ".damaged").read_bytes() == junk


# -- damaged meta file ----------------------------------------------------------------------------


@pytest.mark.slow  # loads a model itself
def test_damaged_meta_is_refused_when_results_exist(custom_task: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    meta = out / "capitals" / "smollm2-135m-instruct.meta.json"
    jsonl = meta.with_name("smollm2-135m-instruct.jsonl")
    assert unite(*_cmd(custom_task, out), "--limit", "1").returncode == 0
    done = jsonl.read_bytes()
    meta.write_bytes(meta.read_bytes()[:25])  # truncated
    refused = unite(*_cmd(custom_task, out), "--limit", "1")
    assert refused.returncode == 2, refused.stderr
    assert f"{meta} is damaged (not a JSON object)" in refused.stderr and "--overwrite" in refused.stderr
    no_traceback(refused)
    assert jsonl.read_bytes() == done, "nothing lost"

    meta.write_text("[1, 2]")  # valid JSON, not a settings object
    assert unite(*_cmd(custom_task, out), "--limit", "1").returncode == 2

    # --overwrite: the results of unknown settings are discarded explicitly and the run redone.
    redo = unite(*_cmd(custom_task, out), "--limit", "1", "--overwrite")
    assert redo.returncode == 0, redo.stderr
    assert json.loads(meta.read_text())["task"] == "capitals"
    assert [json.loads(x)["id"] for x in jsonl.read_text().splitlines()] == [json.loads(done)["id"]]


@pytest.mark.slow  # loads a model itself
def test_damaged_meta_without_results_is_rebuilt(custom_task: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    meta = out / "capitals" / "smollm2-135m-instruct.meta.json"
    meta.parent.mkdir(parents=True)
    meta.write_bytes(b'{"task": "capi')
    proc = unite(*_cmd(custom_task, out), "--limit", "1")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(meta.read_text())["task"] == "capitals"


# -- an item the system cannot run (issue 28 item 13) ----------------------------------------------


@pytest.mark.slow  # loads a model itself
def test_an_over_long_item_stops_the_run_naming_it_and_keeps_the_others(custom_task: Path, tmp_path: Path) -> None:
    data = custom_task.parent / "capitals.jsonl"
    data.write_text(data.read_text() + json.dumps({"country": "Zanzibar " * 400, "capital": "Nowhere"}) + "\n")
    proc = unite(*_cmd(custom_task, tmp_path / "o"), "--n-ctx", "256")
    assert proc.returncode == 4, proc.stderr  # ContextLengthError's exit code
    no_traceback(proc)
    assert "task capitals, item 'Zanzibar" in proc.stderr and len(proc.stderr) < 500
    done = read_results(tmp_path / "o" / "capitals" / "smollm2-135m-instruct.jsonl")
    assert set(done) == {c for c, _ in CAPITALS}, "every item before the long one (in prompt order) was kept"
