"""Datasets of the offline copies of lm-eval's standard multiple-choice tasks.

The prompts, choices and metrics in the YAML files next to this one are those of
lm-evaluation-harness 0.4's ``arc_easy``, ``arc_challenge``, ``piqa`` and ``mmlu`` (default,
zero-shot); only the data comes from the local copies of the same splits in
``$UNITE_DATASETS`` (default ``../shared/datasets``) instead of the Hugging Face hub.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from unite_llm.eval.tasks import default_datasets_dir

MMLU_ITEMS = 300
"""MMLU is one task here, over a seeded sample of the whole test set (lm-eval's ``--limit`` would
otherwise take the first subjects only)."""


def _rows(relpath: str) -> list[dict[str, Any]]:
    path = default_datasets_dir() / relpath
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: set UNITE_DATASETS to the folder that holds {relpath}")
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _dataset(rows: list[dict[str, Any]]) -> datasets.DatasetDict:
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def _arc(relpath: str) -> datasets.DatasetDict:
    return _dataset([{"id": r["id"], "question": r["question"], "choices": r["choices"], "gold": r["gold"]} for r in _rows(relpath)])


def load_arc_easy(**_: Any) -> datasets.DatasetDict:
    """ARC-Easy test (2,376 questions), in file order as on the hub."""
    return _arc("arc/arc_easy_test.jsonl")


def load_arc_challenge(**_: Any) -> datasets.DatasetDict:
    """ARC-Challenge test (1,172 questions), in file order as on the hub."""
    return _arc("arc/arc_challenge_test.jsonl")


def load_piqa(**_: Any) -> datasets.DatasetDict:
    """PIQA validation (1,838 goals) with its labels file."""
    rows = _rows("piqa/valid.jsonl")
    labels_path = default_datasets_dir() / "piqa/valid-labels.lst"
    labels = [int(x) for x in labels_path.read_text(encoding="utf-8").split()]
    if len(labels) != len(rows):
        raise ValueError(f"{labels_path} has {len(labels)} labels for {len(rows)} PIQA items")
    return _dataset([{"goal": r["goal"], "sol1": r["sol1"], "sol2": r["sol2"], "label": y} for r, y in zip(rows, labels)])


def load_mmlu(**_: Any) -> datasets.DatasetDict:
    """MMLU test: a seeded (0) sample of ``MMLU_ITEMS`` questions from all 57 subjects, in file order."""
    rows = _rows("mmlu/mmlu_test.jsonl")
    keep = np.sort(np.random.default_rng(0).choice(len(rows), size=MMLU_ITEMS, replace=False))
    return _dataset([rows[int(i)] | {"index": int(i), "subject_text": rows[int(i)]["subject"].replace("_", " ")} for i in keep])
