"""Datasets of the local lm-eval test tasks: JSONL files next to this one (no network, no cache)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets

HERE = Path(__file__).resolve().parent


def _load(name: str) -> datasets.DatasetDict:
    with (HERE / name).open(encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def load_mc(**_: Any) -> datasets.DatasetDict:
    """``unite_mc``: a question, its choices and the index of the right one."""
    return _load("unite_mc.jsonl")


def load_gen(**_: Any) -> datasets.DatasetDict:
    """``unite_gen``: a question and its short answer."""
    return _load("unite_gen.jsonl")
