"""``unite serve``'s own checks: bad flags and models fail with one line, no traceback."""

from __future__ import annotations

from typer.testing import CliRunner

from unite_llm.cli import app


def run(*args: str):
    return CliRunner().invoke(app, ["serve", *args])


def test_missing_model_file():
    r = run("-m", "/nonexistent/model.gguf", "--port", "8765")
    assert r.exit_code == 3
    assert "error: model file not found: /nonexistent/model.gguf" in r.output
    assert "Traceback" not in r.output


def test_bad_port_and_queue():
    r = run("--port", "70000")
    assert r.exit_code == 2 and "--port must be 1-65535" in r.output
    r = run("--max-queue", "0")
    assert r.exit_code == 2 and "--max-queue must be >= 1" in r.output
    r = run("--max-batch", "0")
    assert r.exit_code == 2 and "--max-batch must be >= 1" in r.output


def test_bad_weights_fail_before_loading():
    r = run("-m", "smollm2-135m-instruct", "-m", "gemma3-270m", "--weights", "1,2,3")
    assert r.exit_code == 2 and "3 weights given for 2 members" in r.output


def test_help_lists_the_options():
    r = CliRunner().invoke(app, ["serve", "--help"])
    assert r.exit_code == 0
    for flag in ("--host", "--port", "--config", "--model", "--max-queue", "--max-batch"):
        assert flag in r.output
