"""A real ``unite eval`` run killed with SIGKILL mid-way resumes to the same summary.

The task is a user's custom task (a JSONL file plus a YAML task file, no Python), run on
the real SmolLM2 model in a subprocess, so this also checks the custom-task path and the
CLI end to end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from unite_llm.eval.runner import read_results

CAPITALS = [
    ("France", "Paris"),
    ("Italy", "Rome"),
    ("Japan", "Tokyo"),
    ("Spain", "Madrid"),
    ("Germany", "Berlin"),
    ("Egypt", "Cairo"),
    ("Canada", "Ottawa"),
    ("Greece", "Athens"),
]

TASK_YAML = """\
name: capitals
data:
  - path: capitals.jsonl
fewshot:
  examples:
    - {country: Peru, capital: Lima}
  answer: " {{ capital }}"
  separator: "\\n"
prompt: "The capital of {{ country }} is"
gold: capital
id: country
extract: {kind: first_word}
metric: normalized_exact
generation: {max_new_tokens: 3, stop: ["\\n"]}
"""


@pytest.fixture()
def custom_task(tmp_path: Path) -> Path:
    (tmp_path / "capitals.jsonl").write_text("".join(json.dumps({"country": c, "capital": k}) + "\n" for c, k in CAPITALS))
    path = tmp_path / "capitals.yaml"
    path.write_text(TASK_YAML)
    return path


def _cmd(task: Path, out: Path) -> list[str]:
    unite = [sys.executable, "-c", "from unite_llm.cli import main; main()"]
    return [
        *unite,
        "eval",
        "--task",
        str(task),
        "-m",
        "smollm2-135m-instruct",
        "--method",
        "single",
        "--out",
        str(out),
        "--threads",
        "1",
        "--no-progress",
    ]


def _summary(out: Path) -> dict:
    data = json.loads((out / "summary.json").read_text())
    row = data["tasks"]["capitals"]["systems"]["smollm2-135m-instruct"]
    return {k: row[k] for k in ("n", "correct", "accuracy", "ci95", "mean_tokens", "mean_chars", "empty_answers")}


@pytest.mark.slow  # loads a model itself
def test_sigkill_then_resume_gives_the_uninterrupted_summary(custom_task: Path, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    full = tmp_path / "full"
    subprocess.run(_cmd(custom_task, full), check=True, env=env, capture_output=True, timeout=300)

    killed = tmp_path / "killed"
    jsonl = killed / "capitals" / "smollm2-135m-instruct.jsonl"
    proc = subprocess.Popen(_cmd(custom_task, killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if jsonl.is_file() and jsonl.read_bytes().count(b"\n") >= 3:
                break
            if proc.poll() is not None:
                pytest.fail("the run finished before it could be killed")
            time.sleep(0.02)
        else:
            pytest.fail("the run wrote no results in time")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    n_before = len(read_results(jsonl, repair=False))
    assert 3 <= n_before < len(CAPITALS), "killed mid-way: some but not all items done"
    assert not (killed / "summary.json").exists()

    subprocess.run(_cmd(custom_task, killed), check=True, env=env, capture_output=True, timeout=300)
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    ids = [r["id"] for r in lines]
    assert sorted(ids) == sorted(c for c, _ in CAPITALS), "every item exactly once, none duplicated"
    assert _summary(killed) == _summary(full)
    full_lines = {
        json.loads(x)["id"]: json.loads(x) for x in (full / "capitals" / "smollm2-135m-instruct.jsonl").read_text().splitlines()
    }
    assert {r["id"]: r["output"] for r in lines} == {i: r["output"] for i, r in full_lines.items()}


def test_torn_last_line_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_bytes(b'{"id": "a", "correct": true}\n{"id": "b", "corr')
    assert list(read_results(path)) == ["a"]
    assert path.read_bytes() == b'{"id": "a", "correct": true}\n'  # cut so the next append starts a fresh line


@pytest.mark.slow  # loads a model itself
def test_changed_settings_are_refused(custom_task: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    subprocess.run([*_cmd(custom_task, out), "--limit", "1"], check=True, env=env, capture_output=True, timeout=300)
    again = subprocess.run(
        [*_cmd(custom_task, out), "--limit", "1", "-n", "5"], env=env, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 2
    assert "holds results of other settings" in again.stderr and "max_new_tokens" in again.stderr
    assert "Traceback" not in again.stderr


@pytest.mark.slow  # loads a model itself
def test_changed_items_are_refused_and_overwrite_reruns_only_them(custom_task: Path, tmp_path: Path) -> None:
    """Finished lines are checked item by item: a changed gold is caught, a no-op spec edit is not."""
    out = tmp_path / "o"
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    jsonl = out / "capitals" / "smollm2-135m-instruct.jsonl"
    subprocess.run([*_cmd(custom_task, out), "--limit", "2"], check=True, env=env, capture_output=True, timeout=300)
    first = {r["id"]: r for r in map(json.loads, jsonl.read_text().splitlines())}
    assert len(first) == 2

    # A description (or another data source) changes no prompt and no gold: the run resumes.
    custom_task.write_text("description: capitals of countries\n" + TASK_YAML)
    subprocess.run([*_cmd(custom_task, out), "--limit", "2"], check=True, env=env, capture_output=True, timeout=300)
    assert {r["id"]: r for r in map(json.loads, jsonl.read_text().splitlines())} == first

    # The data file changes one finished item's gold: refused, naming the item.
    changed = sorted(first)[0]
    data = custom_task.parent / "capitals.jsonl"
    data.write_text("".join(json.dumps({"country": c, "capital": "Lyon" if c == changed else k}) + "\n" for c, k in CAPITALS))
    again = subprocess.run([*_cmd(custom_task, out), "--limit", "2"], env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2, again.stderr
    assert f"1 item(s) whose prompt or gold has changed since (first: id {changed})" in again.stderr
    assert "Traceback" not in again.stderr

    # --overwrite runs that item again and keeps the other finished line as it was.
    subprocess.run(
        [*_cmd(custom_task, out), "--limit", "2", "--overwrite"], check=True, env=env, capture_output=True, timeout=300
    )
    after = {r["id"]: r for r in map(json.loads, jsonl.read_text().splitlines())}
    assert sorted(after) == sorted(first)
    assert after[changed]["gold"] == "Lyon" and after[changed]["correct"] is False
    (kept,) = set(first) - {changed}
    assert after[kept] == first[kept]


@pytest.mark.slow  # loads a model itself
def test_batch_size_gives_the_same_answers_and_resumes_a_run_of_batch_one(custom_task: Path, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    one, four = tmp_path / "one", tmp_path / "four"
    subprocess.run(_cmd(custom_task, one), check=True, env=env, capture_output=True, timeout=300)
    # Half the items at batch size 1, the rest resumed at batch size 4 (not a setting of the results).
    subprocess.run([*_cmd(custom_task, four), "--limit", "3"], check=True, env=env, capture_output=True, timeout=300)
    subprocess.run([*_cmd(custom_task, four), "--batch-size", "4"], check=True, env=env, capture_output=True, timeout=300)
    rows = lambda out: [json.loads(x) for x in (out / "capitals" / "smollm2-135m-instruct.jsonl").read_text().splitlines()]  # noqa: E731
    assert sorted(r["id"] for r in rows(four)) == sorted(c for c, _ in CAPITALS)
    assert {r["id"]: r["output"] for r in rows(four)} == {r["id"]: r["output"] for r in rows(one)}
    assert _summary(four) == _summary(one)
    bad = subprocess.run([*_cmd(custom_task, four), "--batch-size", "0"], env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--batch-size must be >= 1" in bad.stderr and "Traceback" not in bad.stderr
