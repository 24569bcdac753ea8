"""Property test over ``unite generate``'s options (issue 15): any mix of valid and invalid
values ends in a result or a one-line error with a user-error exit code, never a traceback.

In-process through Typer's CliRunner (a subprocess per example would cost a Python start
each); every example that could run uses the small SmolLM2 alone and at most 2 tokens.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from unite_llm.cli import app

USER_EXIT_CODES = {0, 2, 3, 4}

OPTIONS = {
    "--seed": ["-1", "-2", "0", "7", str(2**70), str(-(2**70)), "x", "1.5", ""],
    "--temperature": ["0", "0.7", "nan", "inf", "-inf", "-1", "1e308", "x"],
    "--top-p": ["1", "0.5", "0", "-1", "nan", "2"],
    "--k": ["1", "10", "0", "-3", "x"],
    "--weights": ["1", "0.5,0.5", "-1", "nan", "inf", "x", ""],
    "--n-ctx": ["-1", "0", "16", "64", "256", str(2**31), str(2**40), "x"],
    "--threads": ["1", "0", "-1", "x"],
    "--stop": ["", "\n", "a", "é"],
    "--method": ["unite", "bogus", ""],
    "--primary": ["smollm2-135m-instruct", "nobody"],
    "--system": ["Be brief.", ""],
    "--config": ["/nonexistent/ens.yaml"],
}
FLAGS = ["--json", "--explain", "--chat", "--ignore-eos", "--sequential"]
MODELS = ["smollm2-135m-instruct", "no-such-model", "/nonexistent/model.gguf", "", "bogus:thing"]


@st.composite
def command_lines(draw) -> list[str]:
    args = ["generate", "-m", draw(st.sampled_from(MODELS)), "-n", draw(st.sampled_from(["0", "1", "2", "-1", "x"]))]
    for opt in draw(st.lists(st.sampled_from(sorted(OPTIONS)), max_size=4, unique=True)):
        args += [opt, draw(st.sampled_from(OPTIONS[opt]))]
    args += draw(st.lists(st.sampled_from(FLAGS), max_size=2, unique=True))
    if "--threads" not in args:
        args += ["--threads", "1"]
    prompt = draw(st.text(max_size=30) | st.sampled_from(["Hello", "\x00", "\ud800", "-", "--", "é" * 10]))
    return [*args, "--", prompt]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
@given(argv=command_lines())
def test_generate_options_never_traceback(argv):
    result = CliRunner().invoke(app, argv, input="stdin prompt")
    shown = f"argv={argv!r}\n{result.output}"
    assert result.exception is None or isinstance(result.exception, SystemExit), f"{shown}\n{result.exception!r}"
    assert result.exit_code in USER_EXIT_CODES, shown
    assert "Traceback" not in result.output, shown
