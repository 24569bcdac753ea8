"""The ``unite`` command as a user runs it: a real subprocess, real models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from unite_llm.models import DEFAULT_ENSEMBLE

UNITE = [sys.executable, "-m", "unite_llm.cli"]


def run(*args: str, stdin: bytes | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([*UNITE, *args], input=stdin, capture_output=True, timeout=timeout, env=env)


@pytest.mark.slow  # loads a model itself
def test_generate_json_has_text_steps_and_timing():
    proc = run("generate", "--json", "-n", "8", "--n-ctx", "512", "The capital of France is")
    assert proc.returncode == 0, proc.stderr.decode()
    out = json.loads(proc.stdout)
    assert out["members"] == list(DEFAULT_ENSEMBLE) == ["qwen2.5-coder-1.5b-instruct", "gemma3-270m"]
    assert "Paris" in out["text"]
    assert out["finish_reason"] in {"stop", "length"}
    assert len(out["steps"]) >= 1
    step = out["steps"][0]
    assert {"chosen", "union_size", "member_probs", "prob"} <= set(step)
    assert set(out["timing"]) >= {"load_s", "prefill_s", "decode_s", "steps"}
    assert out["timing"]["steps"] == len(out["steps"])


@pytest.mark.slow  # loads a model itself
def test_generate_streams_plain_text_and_reads_stdin():
    proc = run("generate", "-n", "6", "--n-ctx", "512", "--stop", "\n", "-", stdin=b"2 + 2 =")
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().strip()
    assert b"Traceback" not in proc.stderr


@pytest.mark.slow  # loads a model itself
def test_explain_shows_the_whole_union():
    # --gate off: the default ensemble's gate would leave confident steps to the primary alone.
    proc = run("generate", "--json", "--explain", "-n", "2", "--n-ctx", "512", "--k", "3", "--gate", "off", "Hello")
    out = json.loads(proc.stdout)
    union = out["steps"][0]["union"]
    assert 3 <= len(union) <= 6  # k=3 per member, two members
    assert all(set(c["members"]) == set(DEFAULT_ENSEMBLE) for c in union)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["generate", "-m", "no-such-model", "hi"], 3, "unknown model 'no-such-model'"),
        (["generate", "-m", "/tmp/missing/model.gguf", "hi"], 3, "model file not found: /tmp/missing/model.gguf"),
        (["generate", "--k", "0", "hi"], 2, "k must be an integer >= 1"),
        (["generate", "--weights", "1,2,3", "hi"], 2, "3 weights given for 2 members"),
        (["generate", "--weights", "1,-2", "hi"], 2, "weights must be positive"),
        (["generate", "--weights", "1,abc", "hi"], 2, "--weights: 'abc' is not a number"),
        (["generate", "--top-p", "0", "hi"], 2, "top_p must be in (0, 1]"),
        (["generate", "--n-ctx", "64", "word " * 200], 4, "context"),
        (["generate", "--primary", "nobody", "hi"], 2, "primary 'nobody' is not a member"),
    ],
)
@pytest.mark.slow  # loads a model itself
def test_user_errors_are_one_line_with_an_exit_code(args, code, message):
    proc = run(*args)
    err = proc.stderr.decode()
    assert proc.returncode == code, err
    assert message in err
    assert "Traceback" not in err


def test_invalid_utf8_prompt_is_rejected():
    proc = run("generate", "-", stdin=b"caf\xe9 au lait")
    assert proc.returncode == 2
    assert "not valid UTF-8 (byte 0xE9 at offset 3)" in proc.stderr.decode()


@pytest.mark.slow  # loads a model itself
def test_config_file_drives_generate(tmp_path: Path):
    cfg = tmp_path / "ens.yaml"
    cfg.write_text("members: [smollm2-135m-instruct, gemma3-270m]\nweights: [0.7, 0.3]\nk: 5\n")
    proc = run("generate", "--config", str(cfg), "--json", "-n", "3", "--n-ctx", "512", "Hello")
    assert proc.returncode == 0, proc.stderr.decode()
    assert json.loads(proc.stdout)["members"] == ["smollm2-135m-instruct", "gemma3-270m"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("members: []\n")
    proc = run("generate", "--config", str(bad), "Hello")
    assert proc.returncode == 2 and "invalid config" in proc.stderr.decode()


@pytest.mark.slow  # loads a model itself
def test_same_seed_same_text_across_processes():
    args = ("generate", "--json", "-n", "10", "--n-ctx", "512", "--temperature", "0.9", "--seed", "42", "--ignore-eos", "I like")
    first, second = run(*args), run(*args)
    assert first.returncode == 0, first.stderr.decode()
    assert json.loads(first.stdout)["text"] == json.loads(second.stdout)["text"]


@pytest.mark.slow  # loads a model itself
def test_make_run_answers_the_default_question_coherently():
    # The README's first command, as a user runs it: the default ensemble (Qwen2.5-Coder-1.5B
    # + the base Gemma-3-270M) answers in question/answer form, neither echoing the question
    # nor looping (what the old chat-template default did with the base Gemma).
    root = Path(__file__).resolve().parents[1]
    question = "What do plants take in from the air to make their food, and what do they give off?"
    proc = subprocess.run(["make", "-s", "run"], cwd=root, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    answer = proc.stdout.strip()
    assert answer and question not in answer
    assert "carbon dioxide" in answer.lower() and "oxygen" in answer.lower()
    lines = [line for line in answer.splitlines() if line.strip()]
    assert len(lines) == len(set(lines))
