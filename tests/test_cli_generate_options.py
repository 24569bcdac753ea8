"""Property test over ``unite generate``'s options (issue 15): any mix of valid and invalid
values ends in a result or a one-line error with a user-error exit code, never a traceback.

In-process through Typer's CliRunner (a subprocess per example would cost a Python start
each); every example that could run uses the small SmolLM2 alone and at most 2 tokens.
Deterministic: derandomized (hypothesis' fixed seed), 40 examples.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from unite_llm.cli import app

USER_EXIT_CODES = {0, 2, 3, 4}

# Each option: values a user may validly pass, and values that must be refused.
GOOD = {
    "-m": ["smollm2-135m-instruct"],
    "-n": ["0", "1", "2"],
    "--seed": ["-1", "-2", "0", "7", str(2**70), str(-(2**70))],
    "--temperature": ["0", "0.7", "1e308"],
    "--top-p": ["1", "0.5"],
    "--k": ["1", "10"],
    "--n-ctx": ["0", "64", "256"],
    "--threads": ["1"],
    "--stop": ["\n", "a", "é"],
    "--method": ["unite"],
    "--primary": ["smollm2-135m-instruct"],
    "--weights": ["1"],
}
BAD = {
    "-m": ["no-such-model", "/nonexistent/model.gguf", "", "bogus:thing"],
    "-n": ["-1", "x", "1.5"],
    "--seed": ["x", "1.5", ""],
    "--temperature": ["nan", "inf", "-inf", "-1", "x"],
    "--top-p": ["0", "-1", "nan", "2"],
    "--k": ["0", "-3", "x"],
    "--n-ctx": ["-1", "8", str(2**31), str(2**40), "x"],
    "--threads": ["0", "-1", "x"],
    "--stop": [""],
    "--method": ["bogus", ""],
    "--primary": ["nobody"],
    "--weights": ["0.5,0.5", "-1", "nan", "inf", "x", ""],
    "--system": ["Be brief."],  # without --chat
    "--config": ["/nonexistent/ens.yaml"],
}
FLAGS = ["--json", "--explain", "--chat", "--ignore-eos", "--sequential"]
PROMPTS = st.sampled_from(["Hello", "The capital of France is", "é" * 10, "\x00", "\ud800", "-", "--", ""]) | st.text(max_size=30)


@st.composite
def command_lines(draw) -> list[str]:
    """A valid cheap command line, the same with one or several bad values."""
    n_bad = draw(st.sampled_from([0, 0, 0, 1, 1, 2]))
    bad = set(draw(st.lists(st.sampled_from(sorted(BAD)), min_size=n_bad, max_size=n_bad, unique=True)))
    chosen = {"-m", "-n", "--threads"} | set(draw(st.lists(st.sampled_from(sorted(GOOD)), max_size=4, unique=True))) | bad
    args = ["generate"]
    for opt in sorted(chosen):
        args += [opt, draw(st.sampled_from(BAD[opt] if opt in bad else GOOD[opt]))]
    args += draw(st.lists(st.sampled_from(FLAGS), max_size=2, unique=True))
    return [*args, "--", draw(PROMPTS)]


# Seed and size: derandomized (hypothesis' fixed seed, no example database), 40 examples.
@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow], database=None)
@given(argv=command_lines())
@pytest.mark.slow  # loads a model itself
def test_generate_options_never_traceback(argv):
    result = CliRunner().invoke(app, argv, input="stdin prompt")
    shown = f"argv={argv!r}\n{result.output}"
    assert result.exception is None or isinstance(result.exception, SystemExit), f"{shown}\n{result.exception!r}"
    assert result.exit_code in USER_EXIT_CODES, shown
    assert "Traceback" not in result.output, shown
