"""A table of bad invocations over every entry point (issue 28): ``unite generate``, ``serve``,
``eval``, ``select``, ``models`` and ``unite-lm-eval``.  Each must exit non-zero with exactly
one ``error:`` line on stderr and no traceback; every case fails before any model loads, so
the table runs in seconds.  Click's own usage errors (an option's value of the wrong type, an
unknown option, a missing argument) are one ``error:`` line too, not a boxed usage message.

The ``unite`` rows run in process through :func:`unite_llm.cli.main` (the console script's
function, with its exit code); a few run as real subprocesses of the installed scripts, and
``unite-lm-eval``'s rows (lm-eval takes seconds to import) are in the slow tier.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from unite_llm.cli import main

BIN = Path(sys.executable).parent
ERROR_LINE = re.compile(r"^(error: |[\w.-]+: error: )")  # ours, or argparse's "prog: error: ..." (lm-eval)
TASK_YAML = """\
name: words
data:
  - path: words.jsonl
prompt: "Say {{ word }}"
gold: word
extract: {kind: first_word}
metric: normalized_exact
generation: {max_new_tokens: 2}
"""


@pytest.fixture()
def files(tmp_path: Path) -> Path:
    (tmp_path / "words.jsonl").write_text(json.dumps({"word": "yes"}) + "\n")
    (tmp_path / "task.yaml").write_text(TASK_YAML)
    (tmp_path / "badtask.yaml").write_text("name: t\nprompt: 3\n")  # no data, a prompt that is not text
    (tmp_path / "bad.yaml").write_text("members: [\n")  # YAML that does not parse
    (tmp_path / "badkey.yaml").write_text("members: [smollm2-135m-instruct]\nbogus: 1\n")
    (tmp_path / "afile").write_text("")
    return tmp_path


def check_one_error(code: int | None, err: str, want_code: int, needle: str, argv: list[str]) -> None:
    shown = f"argv={argv!r}\nexit={code}\nstderr={err}"
    assert code == want_code, shown
    assert "Traceback" not in err and 'File "' not in err, shown
    assert [line for line in err.splitlines() if ERROR_LINE.match(line)] == [err.strip()], shown  # one line, an error:
    assert needle in err, shown


# (argv, exit code, text the line must contain); @ is the test's folder of files.
UNITE = [
    # generate
    (["generate", "-m", "@missing.gguf", "hi"], 3, "model file not found"),
    (["generate", "-m", "no-such-model", "hi"], 3, "unknown model 'no-such-model'"),
    (["generate", "--k", "0", "hi"], 2, "k must be an integer >= 1"),
    (["generate", "--k", "abc", "hi"], 2, "Invalid value for '--k'"),
    (["generate", "--weights", "1,abc", "hi"], 2, "--weights: 'abc' is not a number"),
    (["generate", "--weights", "1,2,3", "hi"], 2, "3 weights given for 2 members"),
    (["generate", "--weights", "1,-1", "hi"], 2, "weights must be positive"),
    (["generate", "--gate", "abc", "hi"], 2, "--gate 'abc'"),
    (["generate", "--gate", "margin=x", "hi"], 2, "--gate 'margin=x'"),
    (["generate", "--weighting", "bogus", "hi"], 2, "unknown weighting rule 'bogus'"),
    (["generate", "--config", "@nonexistent.yaml", "hi"], 2, "config file not found"),
    (["generate", "--config", "@bad.yaml", "hi"], 2, "cannot parse"),
    (["generate", "--config", "@badkey.yaml", "hi"], 2, "bogus"),
    (["generate", "--stop", "\udcff", "hi"], 2, "not valid UTF-8"),  # undecodable argv bytes arrive as surrogates
    (["generate", "--primary", "nobody", "hi"], 2, "primary 'nobody' is not a member"),
    (["generate", "--temperature", "nan", "hi"], 2, "temperature must be a finite number"),
    (["generate", "--top-p", "0", "hi"], 2, "top_p must be in (0, 1]"),
    (["generate", "-n", "-1", "hi"], 2, "max_new_tokens"),
    (["generate", "--explain", "hi"], 2, "--explain needs --json"),
    (["generate", "--method", "bogus", "hi"], 2, "unknown method 'bogus'"),
    (["generate", "--system", "Be brief.", "hi"], 2, "--chat"),
    (["generate", "--chat-template", "bogus", "hi"], 2, "--chat-template 'bogus': expected MEMBER=VALUE"),
    (["generate", "--nosuch", "hi"], 2, "No such option: --nosuch"),
    (["generate"], 2, "Missing argument"),
    (["nosuchcommand"], 2, "No such command"),
    # serve
    (["serve", "--default-max-tokens", "-1"], 2, "--default-max-tokens must be >= 0"),
    (["serve", "--port", "x"], 2, "Invalid value for '--port'"),
    (["serve", "--port", "99999"], 2, "--port must be 1-65535"),
    (["serve", "-m", "no-such-model"], 3, "unknown model 'no-such-model'"),
    (["serve", "--k", "0"], 2, "k must be an integer >= 1"),
    (["serve", "--gate", "abc"], 2, "--gate 'abc'"),
    (["serve", "--weights", "1,x"], 2, "--weights: 'x' is not a number"),
    (["serve", "--config", "@bad.yaml"], 2, "cannot parse"),
    (["serve", "--host", "no.such.host.invalid"], 2, "--host no.such.host.invalid: cannot resolve it"),
    (["serve", "--max-queue", "0"], 2, "--max-queue must be >= 1"),
    (["serve", "--max-batch", "0"], 2, "--max-batch must be >= 1"),
    # eval
    (["eval", "--task", "nosuch"], 2, "unknown task 'nosuch'"),
    (["eval", "--task", "@badtask.yaml"], 2, "invalid task file"),
    (["eval", "--task", "@task.yaml", "--k", "abc"], 2, "Invalid value for '--k'"),
    (["eval", "--task", "@task.yaml", "--batch-size", "0"], 2, "--batch-size must be >= 1"),
    (["eval", "--task", "@task.yaml", "--weights", "1,x"], 2, "--weights: 'x' is not a number"),
    (["eval", "--task", "@task.yaml", "--gate", "abc"], 2, "--gate 'abc'"),
    (["eval", "--task", "@task.yaml", "--method", "bogus"], 2, "unknown method 'bogus'"),
    (["eval", "--task", "@task.yaml", "--config", "@bad.yaml"], 2, "cannot parse"),
    (["eval", "--task", "@task.yaml", "-m", "@missing.gguf"], 3, "model file not found"),
    (["eval", "--task", "@task.yaml", "--setting", "bogus"], 2, "has no setting 'bogus' (has: paper)"),
    (["eval"], 2, "Missing option '--task'"),
    # select
    (["select", "-c", "smollm2-135m-instruct", "--task", "nosuch"], 2, "unknown task 'nosuch'"),
    (["select", "-c", "smollm2-135m-instruct", "--task", "@task.yaml", "--limit", "0"], 2, "--limit must be >= 1"),
    (["select", "-c", "smollm2-135m-instruct", "--task", "@task.yaml", "--write", "@afile/x.yaml"], 2, "cannot write"),
    (["select", "-c", "smollm2-135m-instruct", "--task", "@task.yaml", "--write", "@x.txt"], 2, "cannot write a config"),
    (["select", "-c", "smollm2-135m-instruct", "--task", "@task.yaml", "--k", "0"], 2, "k must be an integer >= 1"),
    (["select", "-c", "smollm2-135m-instruct", "--task", "@task.yaml", "--length-unit", "x"], 2, "length unit"),
    (["select", "-c", "smollm2-135m-instruct", "--task", "@task.yaml", "--split", "x"], 2, "split must be validation or test"),
    (["select", "--task", "@task.yaml"], 2, "Missing option '--candidate'"),
    # models
    (["models", "--nosuch"], 2, "No such option: --nosuch"),
    (["models", "extra"], 2, "unexpected extra argument"),
]


def _argv(argv: list[str], folder: Path) -> list[str]:
    return [a.replace("@", f"{folder}/") for a in argv]


@pytest.mark.parametrize(("argv", "code", "needle"), UNITE, ids=[" ".join(c[0]) for c in UNITE])
def test_unite_user_errors_are_one_error_line(files: Path, capsys, argv: list[str], code: int, needle: str) -> None:
    argv = _argv(argv, files)
    with pytest.raises(SystemExit) as info:
        main(argv)
    out = capsys.readouterr()
    check_one_error(info.value.code, out.err, code, needle, argv)


def run(script: str, argv: list[str | bytes]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.run([str(BIN / script), *argv], capture_output=True, env=env, timeout=300)


@pytest.mark.parametrize(
    ("argv", "code", "needle"),
    [
        (["generate", "--k", "abc", "hi"], 2, "Invalid value for '--k'"),
        ([b"generate", b"--stop", b"\xff", b"hi"], 2, "not valid UTF-8"),
        (["eval", "--task", "nosuch"], 2, "unknown task 'nosuch'"),
        (["models", "--nosuch"], 2, "No such option"),
    ],
)
def test_the_installed_unite_script_says_the_same(argv, code: int, needle: str) -> None:
    proc = run("unite", argv)
    check_one_error(proc.returncode, proc.stderr.decode(errors="replace"), code, needle, argv)


def _lm_eval_case(files: Path, argv: list[str], code: int, needle: str) -> None:
    proc = run("unite-lm-eval", _argv(argv, files))
    err = proc.stderr.decode(errors="replace")
    shown = f"argv={argv!r}\nexit={proc.returncode}\nstderr={err[-2000:]}"
    assert proc.returncode == code, shown
    assert "Traceback" not in err, shown
    assert len([line for line in err.splitlines() if ERROR_LINE.match(line)]) == 1, shown
    assert needle in err, shown


LM_EVAL = [
    (["--model", "unite", "--model_args", "k=abc", "--tasks", "lambada_openai", "--limit", "1"], 2, "k='abc'"),
    (["--model", "unite", "--model_args", "weights=a+b", "--tasks", "lambada_openai"], 2, "'a' is not a number"),
    (["--model", "unite", "--model_args", "members=no-such-model", "--tasks", "lambada_openai"], 3, "unknown model"),
    (["--nosuch"], 2, "unrecognized arguments: --nosuch"),
]


@pytest.mark.parametrize(("argv", "code", "needle"), LM_EVAL, ids=[" ".join(c[0]) for c in LM_EVAL])
@pytest.mark.slow  # loads a model itself
def test_unite_lm_eval_user_errors_are_one_error_line(files: Path, argv: list[str], code: int, needle: str) -> None:
    _lm_eval_case(files, argv, code, needle)


@pytest.mark.slow  # loads a model itself
def test_unite_lm_eval_unknown_task_is_one_error_line(files: Path) -> None:
    _lm_eval_case(files, ["--model", "unite", "--tasks", "nosuch_task"], 2, "nosuch_task")


@pytest.mark.parametrize(
    ("argv", "code", "needle"),
    [
        (["--limit", "0"], 2, "--limit '0': N must be >= 1"),
        (["--limit", "x"], 2, "--limit 'x': expected N or TASK=N"),
        (["--out", "@afile"], 2, "not a folder"),
    ],
)
@pytest.mark.slow  # loads a model itself
def test_eval_errors_found_after_one_small_model_loads(files: Path, capsys, argv: list[str], code: int, needle: str) -> None:
    """Slow tier: cli/eval.py checks these only after the members load (SmolLM2 alone here, so a second)."""
    full = _argv(
        [
            "eval",
            "--task",
            "@task.yaml",
            "-m",
            "smollm2-135m-instruct",
            "--method",
            "single",
            "--threads",
            "1",
            "--no-progress",
            *argv,
        ],
        files,
    )
    with pytest.raises(SystemExit) as info:
        main(full)
    check_one_error(info.value.code, capsys.readouterr().err, code, needle, full)
