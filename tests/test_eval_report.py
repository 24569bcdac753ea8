"""Reports from a summary, task loading errors, and the nested item subsets (no models)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unite_llm.errors import InvalidConfigError, InvalidInputError
from unite_llm.eval.report import markdown_table, write_reports
from unite_llm.eval.runner import summarize
from unite_llm.eval.tasks import Task


def _rows(correct: list[bool], chars: int = 5) -> list[dict]:
    return [{"correct": c, "tokens": 2, "chars": chars, "time_s": 0.1, "mean_union": 12, "extracted": "x"} for c in correct]


def _summary() -> dict:
    systems = [
        {"label": "a", "method": "single"},
        {"label": "b", "method": "single"},
        {"label": "unite(a+b)", "method": "unite"},
    ]

    def rows(a: list, b: list, u: list) -> dict:
        return {"a": summarize(_rows(a)), "b": summarize(_rows(b)), "unite(a+b)": summarize(_rows(u))}

    tasks = {
        "piqa": {"n": 4, "systems": rows([1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1])},
        "gsm8k": {"n": 4, "systems": rows([1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0])},
    }
    return {"title": "t", "command": "unite eval", "systems": systems, "tasks": tasks}


def test_table_has_deltas_against_the_best_single_member_per_task() -> None:
    table = markdown_table(_summary())
    lines = table.splitlines()
    header = next(line for line in lines if line.startswith("| system"))
    assert header.index("GSM8K") < header.index("PIQA")  # the paper's column order, not the run order
    unite = next(line for line in lines if line.startswith("| **unite(a+b)**"))
    assert "0.0 (-25.0)" in unite  # GSM8K: best single is a with 25 %
    assert "100.0 (+25.0)" in unite  # PIQA: best single is b with 75 %
    assert "50.0 (+0.0)" in unite  # average 50 vs average of per-task bests (25 + 75) / 2
    assert "| N (items) | 4 | 4 |" in table
    assert "[30.1, 95.4]" in table  # Wilson interval of 3/4


def test_write_reports(tmp_path: Path) -> None:
    paths = write_reports(_summary(), tmp_path)
    assert json.loads(paths["summary"].read_text())["tasks"]["piqa"]["n"] == 4
    assert paths["chart"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Command: `unite eval`" in paths["table"].read_text()


def test_summary_groups_and_empty_answers() -> None:
    rows = _rows([1, 0, 1])
    rows[1]["extracted"] = ""
    for r, g in zip(rows, ["x", "y", "x"]):
        r["group"] = g
    s = summarize(rows, by_group=True)
    assert s["groups"] == {"x": {"n": 2, "accuracy": 100.0}, "y": {"n": 1, "accuracy": 0.0}}
    assert s["empty_answers"] == 1 and s["accuracy"] == pytest.approx(66.67)


def test_limits_nest_and_keep_file_order(datasets) -> None:
    task = Task.load("lambada", datasets_dir=datasets)
    small, big = task.items(limit=20, seed=0), task.items(limit=60, seed=0)
    assert {i.id for i in small} <= {i.id for i in big}
    assert [int(i.id) for i in big] == sorted(int(i.id) for i in big)
    assert {i.id for i in task.items(limit=20, seed=1)} != {i.id for i in small}


def test_mmlu_prompt_is_few_shot_from_the_same_subject(datasets) -> None:
    item = Task.load("mmlu", datasets_dir=datasets).items(limit=5)[0]
    subject = item.group.replace("_", " ")
    assert item.prompt.startswith(f"The following are multiple choice questions (with answers) about {subject}.")
    assert item.prompt.count("\nAnswer:") == 6 and item.prompt.endswith("\nAnswer:")


@pytest.mark.slow  # loads a model itself
def test_task_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(InvalidConfigError, match="unknown task 'nope'"):
        Task.load("nope")
    bad = tmp_path / "t.yaml"
    bad.write_text("name: t\ndata: [{path: missing.jsonl}, {hf: {path: x/y}}]\nprompt: '{{ q }}'\nmetric: exact\n")
    with pytest.raises(InvalidInputError, match=r"no data found \(tried missing.jsonl, hf:x/y"):
        Task.load(str(bad)).items()
    bad.write_text("name: t\ndata: [{path: d.jsonl}]\nprompt: '{{ q }}'\nmetric: bleu\n")
    with pytest.raises(InvalidConfigError, match="unknown metric 'bleu'"):
        Task.load(str(bad))
    (tmp_path / "d.jsonl").write_text('{"q": "hi"}\n')
    bad.write_text("name: t\ndata: [{path: d.jsonl}]\nprompt: '{{ q }}'\ngold: answer\n")
    with pytest.raises(InvalidInputError, match="'answer' is undefined"):
        Task.load(str(bad)).items()
    with pytest.raises(InvalidConfigError, match="no setting 'huge'"):
        Task.load("gsm8k", setting="huge")


def test_ensemble_compared_with_the_best_single_member_on_the_same_items() -> None:
    from types import SimpleNamespace

    from unite_llm.eval import _compare_with_best_single

    verdicts = {"a": [1, 1, 0, 0], "b": [1, 1, 1, 0], "unite(a+b)": [1, 1, 1, 1]}
    entry = {"systems": {k: summarize(_rows(v)) for k, v in verdicts.items()}}
    systems = [SimpleNamespace(label="a", method="single"), SimpleNamespace(label="b", method="single")]
    systems.append(SimpleNamespace(label="unite(a+b)", method="unite"))
    _compare_with_best_single(entry, systems, {k: [bool(x) for x in v] for k, v in verdicts.items()})
    d = entry["systems"]["unite(a+b)"]["vs_best_single"]
    assert d["best"] == "b" and d["delta"] == 25.0 and d["ci95"][0] >= 0.0
    assert "vs_best_single" not in entry["systems"]["a"]
    summary = {"systems": [{"label": s.label, "method": s.method} for s in systems], "tasks": {"piqa": {"n": 4, **entry}}}
    assert "| PIQA | unite(a+b) | b | +25.0 |" in markdown_table(summary)
