"""The README and the docs stay true, without loading a model.

* the README is a front page: at most 200 lines and 12 KB, and its set-up block holds exactly
  the two commands ``make run`` and ``make test``;
* every relative link (and ``#anchor``) in README.md, docs/*.md and bench/README.md points to an
  existing file (and heading), inside the repository; so does every repository path written as
  inline code (``bench/results/x.json``);
* every command in their shell blocks exists as written: ``unite <subcommand>`` with its options
  and their values parsed by the CLI's own click command; ``unite-lm-eval`` / ``python -m
  unite_llm.lm_eval_model`` / ``lm-eval run`` flags by lm-eval's parser, and ``--model unite``'s
  ``--model_args`` keys by ``UniteLM``; ``make`` targets by the Makefile; ``bench/*.py`` scripts and
  their flags by the script's source; ``pip install '.[extras]'`` by pyproject.toml;
* every ```python block compiles, and what it imports from ``unite_llm`` exists (attributes of
  imported classes included).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import shlex
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import typer

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md"]
SHELL = {"bash", "sh", "shell", "console"}


@dataclass
class Block:
    page: Path
    lang: str
    line: int  # 1-based line of the opening fence
    text: str


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


@cache
def blocks(page: Path) -> tuple[Block, ...]:
    out, lang, start, body = [], None, 0, []
    for i, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("```"):
            if lang is None:
                lang, start, body = line[3:].strip().lower(), i, []
            else:
                out.append(Block(page, lang, start, "\n".join(body)))
                lang = None
        elif lang is not None:
            body.append(line)
    assert lang is None, f"{rel(page)}:{start}: unclosed code block"
    return tuple(out)


def prose(page: Path) -> str:
    """The page without its fenced code blocks (their lines blanked, so line numbers hold)."""
    lines, inside = [], False
    for line in page.read_text(encoding="utf-8").splitlines():
        fence = line.startswith("```")
        lines.append("" if inside or fence else line)
        inside ^= fence
    return "\n".join(lines)


def test_pages_exist() -> None:
    for page in PAGES:
        assert page.is_file(), rel(page)


# -- (a) the README is a front page -------------------------------------------------------


def test_readme_is_a_front_page() -> None:
    data = README.read_bytes()
    assert len(data) <= 12 * 1024, f"README.md is {len(data)} bytes (at most 12 KB): move a section into docs/"
    lines = data.decode("utf-8").splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines (at most 200): move a section into docs/"


def test_readme_setup_block_is_the_two_commands() -> None:
    text = README.read_text(encoding="utf-8")
    heading = re.search(r"^## Set-up\b.*$", text, re.M)
    assert heading, "README.md has no '## Set-up' section"
    setup_line = text[: heading.start()].count("\n") + 1
    block = next(b for b in blocks(README) if b.line > setup_line)
    assert block.lang in SHELL
    commands = [line.split("#", 1)[0].strip() for line in block.text.splitlines() if line.strip()]
    assert commands == ["make run", "make test"], commands


# -- (b) links and paths ------------------------------------------------------------------

LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
CODE_SPAN = re.compile(r"`([^`\n]+)`")
REPO_PATH = re.compile(r"(?:bench|results|docs|tests|src|\.ci)/[\w.\-/]*")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*_]|<[^>]+>", "", heading).strip().lower()
    return re.sub(r"\s", "-", re.sub(r"[^\w\- ]", "", text))


@cache
def anchors(page: Path) -> frozenset[str]:
    heads = re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", prose(page), re.M)
    return frozenset(slug(h) for h in heads)


def test_relative_links_resolve() -> None:
    bad = []
    for page in PAGES:
        text = CODE_SPAN.sub("", prose(page))
        for target in LINK.findall(text):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
                continue
            path_part, _, anchor = target.partition("#")
            path = (page.parent / path_part).resolve() if path_part else page
            where = f"{rel(page)}: ({target})"
            if not path.is_relative_to(ROOT):
                bad.append(f"{where} leaves the repository")
            elif not path.exists():
                bad.append(f"{where}: no such file")
            elif anchor and path.suffix == ".md" and anchor not in anchors(path):
                bad.append(f"{where}: no heading #{anchor} in {rel(path)}")
    assert not bad, "\n".join(bad)


def test_repository_paths_in_inline_code_exist() -> None:
    bad = []
    for page in PAGES:
        for span in CODE_SPAN.findall(prose(page)):
            for word in span.split():
                if not REPO_PATH.fullmatch(word):
                    continue
                if not ((ROOT / word).exists() or (page.parent / word).exists()):
                    bad.append(f"{rel(page)}: `{word}`")
    assert not bad, "paths named in the docs that do not exist:\n" + "\n".join(bad)


# -- (c) the shell examples name commands and flags that exist ----------------------------


@dataclass
class Command:
    where: str
    argv: list[str]


def shell_commands() -> list[Command]:
    out = []
    for page in PAGES:
        for block in blocks(page):
            if block.lang not in SHELL:
                continue
            text = re.sub(r"\\\n", " ", block.text)  # continuation lines
            for offset, line in enumerate(text.splitlines()):
                try:
                    words = shlex.split(line, comments=True)
                except ValueError as err:
                    raise AssertionError(f"{rel(page)}:{block.line + 1 + offset}: {err}: {line}") from None
                argv: list[str] = []
                for word in [*words, ";"]:
                    if word in {"|", "||", "&", "&&", ";"}:
                        while argv and re.fullmatch(r"[A-Za-z_]\w*=.*", argv[0]):  # VAR=value cmd
                            argv.pop(0)
                        if argv:
                            out.append(Command(f"{rel(page)}:{block.line}: {' '.join(argv)}", argv))
                        argv = []
                    else:
                        argv.append(word)
    return out


@cache
def unite_cli() -> Any:
    """The click group behind the Typer app (typer may vendor its own click, so no isinstance)."""
    from unite_llm.cli import app

    group = typer.main.get_command(app)
    assert hasattr(group, "commands"), group
    return group


@cache
def lm_eval_run_flags() -> frozenset[str]:
    harness = pytest.importorskip("lm_eval._cli").HarnessCLI()
    return frozenset(harness._subparsers.choices["run"]._option_string_actions)


@cache
def unite_lm_args() -> frozenset[str]:
    from unite_llm import lm_eval_model

    params = inspect.signature(lm_eval_model.UniteLM.__init__).parameters
    return frozenset(n for n, p in params.items() if n not in {"self", "ensemble"} and p.kind is not p.VAR_KEYWORD)


@cache
def extras() -> frozenset[str]:
    import tomllib

    return frozenset(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])


def check_pip(args: list[str]) -> str | None:
    """``pip install [-c FILE] '.[extra,...]'``: the constraints file and the extras exist."""
    problems = []
    for i, arg in enumerate(args):
        if arg == "-c" and not (ROOT / args[i + 1]).is_file():
            problems.append(f"no constraints file {args[i + 1]}")
        if m := re.fullmatch(r"\.\[([\w,-]+)\]", arg):
            problems += [f"no extra {e!r} in pyproject.toml" for e in m[1].split(",") if e not in extras()]
    return "; ".join(problems) or None


@cache
def make_targets() -> frozenset[str]:
    return frozenset(re.findall(r"^([\w.-]+)\s*:(?!=)", (ROOT / "Makefile").read_text(), re.M))


def is_program(word: str, name: str) -> bool:
    return word == name or word.endswith("/" + name)


def check_unite(argv: list[str]) -> str | None:
    group = unite_cli()
    if len(argv) < 2 or argv[1] not in group.commands:
        return f"no such sub-command (have: {', '.join(sorted(group.commands))})"
    command = group.commands[argv[1]]
    try:
        command.make_context(f"unite {argv[1]}", argv[2:])  # parses and converts every option; runs nothing
    except Exception as err:  # click's UsageError / BadParameter (typer's vendored click or click itself)
        return err.format_message() if hasattr(err, "format_message") else f"{type(err).__name__}: {err}"
    return None


def check_lm_eval(args: list[str]) -> str | None:
    flags = lm_eval_run_flags()
    unknown = [a.split("=")[0] for a in args if a.startswith("--") and a.split("=")[0] not in flags]
    if unknown:
        return f"lm-eval has no {', '.join(unknown)}"
    if "--model" in args and args[args.index("--model") + 1] == "unite" and "--model_args" in args:
        keys = [kv.split("=")[0] for kv in args[args.index("--model_args") + 1].split(",")]
        wrong = [k for k in keys if k not in unite_lm_args()]
        if wrong:
            return f"the unite model has no model_args {', '.join(wrong)}"
    return None


def check(argv: list[str]) -> str | None:
    prog = argv[0]
    if is_program(prog, "unite"):
        return check_unite(argv)
    if is_program(prog, "unite-lm-eval"):
        return check_lm_eval(argv[1:])
    if is_program(prog, "lm-eval") and argv[1:2] == ["run"]:
        return check_lm_eval(argv[2:])
    if re.fullmatch(r"(.*/)?python3?", prog) and argv[1:3] == ["-m", "unite_llm.lm_eval_model"]:
        return check_lm_eval(argv[3:])
    if re.fullmatch(r"(.*/)?python3?", prog) and len(argv) > 1 and argv[1].startswith("bench/"):
        script = ROOT / argv[1]
        if not script.is_file():
            return "no such script"
        source = script.read_text(encoding="utf-8")
        unknown = [a for a in argv[2:] if a.startswith("-") and not re.search(rf"[\"']{re.escape(a.split('=')[0])}[\"']", source)]
        return f"{argv[1]} takes no {', '.join(unknown)}" if unknown else None
    if re.fullmatch(r"(.*/)?pip3?", prog) and argv[1:2] == ["install"]:
        return check_pip(argv[2:])
    if prog == "make":
        unknown = [t for t in argv[1:] if "=" not in t and not t.startswith("-") and t not in make_targets()]
        return f"no make target {', '.join(unknown)}" if unknown else None
    return None  # another program (ray, vllm, llama_cpp.server, ...): not ours to check


def test_shell_examples_name_real_commands_and_flags() -> None:
    commands = shell_commands()
    ours = [c for c in commands if is_program(c.argv[0], "unite")]
    assert len(ours) >= 20, "the shell-block parser lost the unite examples"
    bad = [f"{c.where}\n    -> {err}" for c in commands if (err := check(c.argv))]
    assert not bad, "\n".join(bad)


def test_the_checker_catches_a_wrong_example() -> None:
    assert check(["unite", "generate", "--no-such-flag", "x"])
    assert check(["unite", "no-such-command"])
    assert check(["unite", "generate", "--k", "ten", "x"])  # a value of the wrong type
    assert check([".venv/bin/unite", "eval", "--task", "triviaqa"]) is None
    assert check(["make", "no-such-target"])
    assert check(["python", "bench/bench_core.py", "--no-such-flag"])
    assert check(["pip", "install", ".[no-such-extra]"])
    assert check([".venv/bin/unite-lm-eval", "--model", "unite", "--model_args", "members=a+b,no_such_arg=1"])


# -- (d) the Python examples compile and import what exists --------------------------------


def python_blocks() -> list[Block]:
    return [b for page in PAGES for b in blocks(page) if b.lang in {"python", "py"}]


def test_python_examples_compile_and_import_what_exists() -> None:
    assert any(b.page == README for b in python_blocks()), "the README has no Python example"
    bad = []
    for block in python_blocks():
        where = f"{rel(block.page)}:{block.line}"
        try:
            compile(block.text, where, "exec")
            tree = ast.parse(block.text)
        except SyntaxError as err:
            bad.append(f"{where}: {err}")
            continue
        imported: dict[str, object] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "unite_llm":
                        importlib.import_module(alias.name)
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "unite_llm":
                module = importlib.import_module(node.module or "")
                for alias in node.names:
                    if not hasattr(module, alias.name):
                        bad.append(f"{where}: {node.module} has no {alias.name}")
                    else:
                        imported[alias.asname or alias.name] = getattr(module, alias.name)
        for node in ast.walk(tree):  # Ensemble.load, GenerationConfig.greedy, ...
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in imported:
                if not hasattr(imported[node.value.id], node.attr):
                    bad.append(f"{where}: {node.value.id} has no {node.attr}")
    assert not bad, "\n".join(bad)
