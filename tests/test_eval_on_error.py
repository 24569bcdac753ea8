"""An item the system cannot run (issue 28 item 13): before, one over-long item stopped the
whole eval with a message that did not name it.  Now ``on_error="stop"`` names the task, the
item and the system (the items before it are kept and resume), and ``on_error="skip"`` records
it as incorrect with its ``"error"``, counted as ``errors`` in the summary and the table; in a
batch, the other items of the failing batch still get their results.  Fake members (fast tier)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fakes import FakeMember
from unite_llm.errors import ContextLengthError, InvalidConfigError
from unite_llm.eval import evaluate_systems
from unite_llm.eval.runner import read_results, single_system
from unite_llm.eval.tasks import Task

ROWS = [("a", "the cat"), ("long", "the " * 200), ("b", "a dog")]
TASK_YAML = """\
name: words
data:
  - path: words.jsonl
prompt: "{{ text }}"
gold: gold
id: key
extract: {kind: first_word}
metric: normalized_exact
generation: {max_new_tokens: 2}
"""


@pytest.fixture()
def task(tmp_path: Path) -> Task:
    (tmp_path / "words.jsonl").write_text("".join(json.dumps({"key": k, "text": t, "gold": "x"}) + "\n" for k, t in ROWS))
    (tmp_path / "words.yaml").write_text(TASK_YAML)
    return Task.load(str(tmp_path / "words.yaml"))


def system(batch: bool = False):
    return single_system(FakeMember("left", n_ctx=64, batch=batch))


def test_stop_names_the_item_and_keeps_the_others(task: Task, tmp_path: Path) -> None:
    sys_ = system()
    with pytest.raises(ContextLengthError, match=r"task words, item 'long' \(left\): .*on_error='skip'"):
        evaluate_systems([task], [sys_], out=tmp_path / "o", progress=False, reports=False)
    done = read_results(tmp_path / "o" / "words" / f"{sys_.slug}.jsonl")
    assert "long" not in done and set(done) <= {"a", "b"} and done  # items sorted by prompt: 'a dog' ran first


@pytest.mark.parametrize("batch_size", [1, 3])
def test_skip_records_the_item_as_incorrect_with_its_error(task: Task, tmp_path: Path, batch_size: int) -> None:
    sys_ = system(batch=batch_size > 1)
    summary = evaluate_systems(
        [task], [sys_], out=tmp_path / "o", progress=False, on_error="skip", batch_size=batch_size, reports=True
    )
    row = summary["tasks"]["words"]["systems"][sys_.label]
    assert row["n"] == 3 and row["errors"] == 1
    done = read_results(tmp_path / "o" / "words" / f"{sys_.slug}.jsonl")
    assert set(done) == {"a", "long", "b"}
    assert done["long"]["correct"] is False and "context" in done["long"]["error"] and done["long"]["finish_reason"] == "error"
    assert "error" not in done["a"] and done["a"]["tokens"] > 0 and done["b"]["tokens"] > 0
    assert "Items skipped after an error" in (tmp_path / "o" / "table.md").read_text()


def test_a_bad_on_error_value_is_refused_before_anything_runs(task: Task, tmp_path: Path) -> None:
    with pytest.raises(InvalidConfigError, match="on_error must be one of stop, skip"):
        evaluate_systems([task], [system()], out=tmp_path / "o", progress=False, on_error="ignore")
    assert not (tmp_path / "o").exists()
