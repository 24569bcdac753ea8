"""``unite select`` end to end on the two real models, on a small custom task: it
evaluates each candidate, writes a config, and ``unite generate --config`` runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from unite_llm.config import EnsembleConfig

from .test_eval_resume import CAPITALS, TASK_YAML

UNITE = [sys.executable, "-c", "from unite_llm.cli import main; main()"]


@pytest.mark.slow  # loads a model itself
def test_select_writes_a_config_that_generate_runs(tmp_path: Path) -> None:
    (tmp_path / "capitals.jsonl").write_text("".join(json.dumps({"country": c, "capital": k}) + "\n" for c, k in CAPITALS[:4]))
    task = tmp_path / "capitals.yaml"
    task.write_text(TASK_YAML)
    cfg_path = tmp_path / "picked.yaml"
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "COLUMNS": "200"}
    cmd = [
        *UNITE, "select", "-c", "smollm2-135m-instruct", "-c", "gemma3-270m", "--task", str(task),
        "--out", str(tmp_path / "runs"), "--write", str(cfg_path), "--report", str(tmp_path / "sel.md"),
        "--threads", "1", "--no-progress", "--gap", "100", "--length-ratio", "100", "--verify",
    ]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "primary" in done.stdout and "verdict" in done.stdout

    cfg = EnsembleConfig.read(cfg_path)
    report = json.loads((tmp_path / "sel.json").read_text())
    scores = {r["candidate"]: r for r in report["decisions"]}
    assert set(scores) == {"smollm2-135m-instruct", "gemma3-270m"}
    # The primary is the candidate with the higher measured score (the first listed on a tie).
    best = max(scores.values(), key=lambda r: r["score"])["score"]
    expected_primary = next(n for n in ("smollm2-135m-instruct", "gemma3-270m") if scores[n]["score"] == best)
    assert cfg.members[0] == expected_primary and cfg.primary == expected_primary
    assert set(cfg.members) == set(scores)  # the loose gap and ratio admit both
    assert cfg.notes["decisions"][0]["verdict"] == "primary" and cfg.notes["task"] == "capitals"
    verify = report["verify"]
    assert set(verify) == {"smollm2-135m-instruct", "gemma3-270m", "selected"}
    assert verify["selected"]["members"] == cfg.members and verify["selected"]["n"] == 4
    assert verify["selected"]["delta_vs_selected"] == 0.0
    for name in scores:  # each member alone vs the ensemble, on the same 4 items
        diff = verify[name]["accuracy"] - verify["selected"]["accuracy"]
        assert verify[name]["delta_vs_selected"] == pytest.approx(diff, abs=0.01)
        assert verify[name]["delta_ci95"][0] <= verify[name]["delta_vs_selected"] <= verify[name]["delta_ci95"][1]
    assert scores["gemma3-270m"]["vocab_size"] == 262144 and scores["smollm2-135m-instruct"]["vocab_size"] == 49152
    # The per-item results the selection used are the harness's own files, one line per item.
    for name in scores:
        lines = (tmp_path / "runs" / "capitals" / f"{name}.jsonl").read_text().splitlines()
        assert len(lines) == 4

    gen = subprocess.run(
        [*UNITE, "generate", "--config", str(cfg_path), "--json", "-n", "4", "The capital of France is"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert gen.returncode == 0, gen.stderr
    out = json.loads(gen.stdout)
    assert out["members"] == cfg.members and len(out["steps"]) >= 1


@pytest.mark.slow  # loads a model itself
def test_strict_rule_rejects_and_config_keeps_the_primary_only(tmp_path: Path) -> None:
    (tmp_path / "capitals.jsonl").write_text("".join(json.dumps({"country": c, "capital": k}) + "\n" for c, k in CAPITALS[:2]))
    task = tmp_path / "capitals.yaml"
    task.write_text(TASK_YAML)
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "COLUMNS": "200"}
    cmd = [
        *UNITE, "select", "-c", "smollm2-135m-instruct", "-c", "gemma3-270m", "--task", str(task),
        "--out", str(tmp_path / "runs"), "--write", str(tmp_path / "c.json"), "--threads", "1", "--no-progress",
        "--gap", "0", "--length-ratio", "1.0",
    ]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    cfg = EnsembleConfig.read(tmp_path / "c.json")
    verdicts = [d["verdict"] for d in cfg.notes["decisions"]]
    # With gap 0 and ratio 1 a second member joins only if it ties exactly on score and length.
    d = cfg.notes["decisions"][1]
    tie = d["gap"] == 0 and d["length_ratio"] == 1
    assert verdicts == ["primary", "selected" if tie else "rejected"]
    assert len(cfg.members) == (2 if tie else 1)


@pytest.mark.slow  # loads a model itself
def test_tune_gate_never_chooses_below_the_primary_and_writes_its_choice(tmp_path: Path) -> None:
    """``--tune-gate`` picks on the even items among the primary alone and the gate grid, so
    the chosen setting is at least the primary's accuracy there, and its config says it."""
    from unite_llm.select import robust_grid, run_selection

    (tmp_path / "capitals.jsonl").write_text("".join(json.dumps({"country": c, "capital": k}) + "\n" for c, k in CAPITALS))
    task = tmp_path / "capitals.yaml"
    task.write_text(TASK_YAML)
    rep = run_selection(
        ["smollm2-135m-instruct", "gemma3-270m"],
        str(task),
        limit=None,
        out=tmp_path / "runs",
        gap=100,
        length_ratio=100,
        tune_gate=True,
        progress=False,
        member_options={"n_threads": 1},
    )
    g = rep.tuning["gate"]
    assert (g["tune_n"], g["held_out_n"]) == (4, 4)
    names = [t["name"] for t in g["trials"]]
    assert names[0] == "primary alone" and len(names) == 1 + len(robust_grid())
    alone = g["trials"][0]["accuracy"]
    best = next(t for t in g["trials"] if t["name"] == g["best"])
    assert best["accuracy"] == max(t["accuracy"] for t in g["trials"]) >= alone
    always = next(t for t in g["trials"] if t["name"] == "always")
    assert always["ensembled"] == 1.0  # gate 1.01: every step ensembled
    if g["best"] == "primary alone":
        assert len(rep.config.members) == 1 and rep.config.gate is None
    else:
        assert len(rep.config.members) == 2
        assert rep.config.gate == (best["gate"] if best["gate"] <= 1 else None)
        assert rep.config.weighting == (best["weighting"] or [])
    assert rep.config.notes["tuning"]["gate"]["best"] == g["best"]
