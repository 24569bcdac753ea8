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
