"""``results/lm_eval/``: the committed table is what its per-item files give.

``bench/lm_eval_table.py`` rebuilds ``table.md`` and ``summary.json`` from ``items/`` (every
member's log-likelihood of every choice), and refuses items whose recomputed ensemble accuracy
differs from the one lm-eval logged, so the script's rules cannot drift from lm-eval's unseen.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results" / "lm_eval"


def script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lm_eval_table", ROOT / "bench" / "lm_eval_table.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_table_is_rebuilt_from_items(tmp_path: Path) -> None:
    shutil.copytree(RESULTS / "items", tmp_path / "items")
    table = script()
    summary = table.table(tmp_path)
    assert summary == json.loads((RESULTS / "summary.json").read_text(encoding="utf-8"))
    assert table.markdown(summary) + "\n" == (RESULTS / "table.md").read_text(encoding="utf-8")
    assert {t: s["n"] for t, s in summary["tasks"].items()} == dict.fromkeys(table.NAMES, 300)


def test_items_carry_no_benchmark_text() -> None:
    for path in (RESULTS / "items").glob("*.jsonl"):
        lines = path.read_text(encoding="utf-8").splitlines()
        for line in lines[1:]:
            row = json.loads(line)
            assert set(row) == {"doc_id", "doc_hash", "target", "choice_chars", "member_logliks", "logged"}
            assert len(row["member_logliks"]) == len(row["choice_chars"]) >= 2


def test_a_recomputed_accuracy_that_differs_from_lm_eval_s_is_refused(tmp_path: Path) -> None:
    shutil.copytree(RESULTS / "items", tmp_path / "items")
    path = tmp_path / "items" / "unite_piqa.jsonl"
    head, first, *rest = path.read_text(encoding="utf-8").splitlines()
    row = json.loads(first)
    row["logged"]["acc"] = 1.0 - row["logged"]["acc"]
    path.write_text("\n".join([head, json.dumps(row), *rest]) + "\n", encoding="utf-8")
    with pytest.raises(SystemExit, match=r"unite_piqa: recomputed acc .* on 1 items"):
        script().table(tmp_path)
