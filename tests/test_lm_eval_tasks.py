"""The offline copies of lm-eval's standard multiple-choice tasks behind ``results/lm_eval/``.

Their prompts, choices, targets and metrics must be lm-eval's own (compared with the YAML
files lm-eval ships), and their data the local copies of the same splits, complete.
"""

from __future__ import annotations

from pathlib import Path

import lm_eval
import pytest
import yaml
from lm_eval.tasks import TaskManager

ROOT = Path(__file__).resolve().parents[1]
OURS = ROOT / "results" / "lm_eval" / "tasks"
THEIRS = Path(lm_eval.__file__).parent / "tasks"
# our task -> (lm-eval's YAML, the number of documents)
TASKS = {
    "unite_arc_easy": ("arc/arc_easy.yaml", 2376),
    "unite_arc_challenge": ("arc/arc_challenge.yaml", 1172),
    "unite_piqa": ("piqa/piqa.yaml", 1838),
    "unite_mmlu": ("mmlu/default/_default_template_yaml", 300),
}
FIELDS = ("output_type", "doc_to_text", "doc_to_choice", "doc_to_target", "metric_list")


def theirs(relpath: str) -> dict:
    cfg = yaml.safe_load((THEIRS / relpath).read_text(encoding="utf-8"))
    if "include" in cfg:
        cfg = {**theirs(str(Path(relpath).parent / cfg["include"])), **cfg}
    return cfg


@pytest.fixture(scope="module")
def manager(datasets) -> TaskManager:
    return TaskManager(include_path=str(OURS), include_defaults=False)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_prompts_are_lm_eval_s_own(name, manager) -> None:
    relpath, n_docs = TASKS[name]
    ours = yaml.safe_load((OURS / f"{name}.yaml").read_text(encoding="utf-8").replace("!function ", ""))
    standard = theirs(relpath)
    # ARC's local copy stores choices as a list and the answer as an index (the hub: labels + answerKey).
    same = [f for f in FIELDS if not (name.startswith("unite_arc") and f in ("doc_to_target", "doc_to_choice"))]
    for field in same:
        assert ours[field] == standard[field], field
    task = manager.load_task_or_group([name])[name]
    docs = list(task.test_docs())
    assert len(docs) == n_docs
    doc = docs[0]
    text = task.doc_to_text(doc)
    assert text.endswith("Answer:") and text.startswith("Question: ") == (name != "unite_mmlu")
    choices = task.doc_to_choice(doc)
    assert 0 <= task.doc_to_target(doc) < len(choices)


def test_mmlu_is_a_seeded_sample_of_all_subjects(manager) -> None:
    task = manager.load_task_or_group(["unite_mmlu"])["unite_mmlu"]
    docs = list(task.test_docs())
    assert len({d["subject"] for d in docs}) > 40
    ctx = task.fewshot_context(docs[0], num_fewshot=0)
    subject = docs[0]["subject"].replace("_", " ")
    assert ctx.startswith(f"The following are multiple choice questions (with answers) about {subject}.\n\n")
