"""Reading a user's text files (configs, task files, few-shot blocks): one-line errors, bounded YAML.

A file that is not UTF-8 is an error naming the file and the byte, not a ``UnicodeDecodeError``
traceback.  YAML aliases are allowed (the CMMLU task names its 67 subjects once and refers to
them), but what a document expands to is bounded: nine anchors of nine aliases each (a "billion
laughs") took 96 s and 5.5 GB before any error; it is now refused in milliseconds, after composing
the document's node graph and before constructing a single Python object.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import InvalidConfigError, UniteError

MAX_YAML_NODES = 100_000
"""The most nodes a YAML document may expand to, aliases counted at every use (a task file
with its 67 CMMLU subjects is about 200)."""


def read_text(path: str | Path, what: str, error: type[UniteError] = InvalidConfigError) -> str:
    """The file's text, or ``error`` naming ``what``, the file and the first byte that is not UTF-8."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise error(f"cannot read {what} {path}: {err.strerror or err}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise error(f"{what} {path} is not UTF-8 text (byte 0x{data[err.start]:02X} at offset {err.start})") from None


def _expanded_size(node: yaml.Node, memo: dict[int, int], open_: set[int]) -> int:
    """Nodes ``node`` stands for once every alias is expanded (a shared node counted at each use)."""
    key = id(node)
    if key in memo:
        return memo[key]
    if key in open_:
        raise InvalidConfigError("a YAML alias refers to a node that contains it (a recursive structure)")
    open_.add(key)
    size = 1
    if isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(child, memo, open_) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size += sum(_expanded_size(k, memo, open_) + _expanded_size(v, memo, open_) for k, v in node.value)
    open_.discard(key)
    memo[key] = min(size, MAX_YAML_NODES + 1)  # saturate: the sum cannot grow without bound
    return memo[key]


def yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error in one line: what is wrong and where (PyYAML's own text spans several lines,
    with a caret under the spot)."""
    problem = getattr(err, "problem", None)
    if not problem:
        return " ".join(str(err).split())
    mark = getattr(err, "problem_mark", None)
    context = getattr(err, "context", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{context + ': ' if context else ''}{problem}{where}"


def validation_problems(err: Any) -> str:
    """A pydantic ``ValidationError`` in one line: ``field: problem (got value)``, ``;``-separated."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e.get("loc", ())) or "(the document)"
        got = "" if e.get("type") == "missing" else f" (got {_short(e.get('input'))})"
        msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}{got}")
    return "; ".join(parts)


def _short(value: Any, limit: int = 60) -> str:
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_yaml(text: str, where: str) -> Any:
    """``yaml.safe_load(text)`` with the expansion bounded (see the module docstring)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        size = _expanded_size(node, {}, set())
        if size > MAX_YAML_NODES:
            raise InvalidConfigError(
                f"cannot parse {where}: it expands to more than {MAX_YAML_NODES:,} values through YAML aliases "
                "(an alias bomb?); write the values out, or use fewer aliases"
            )
        return loader.construct_document(node)
    except yaml.YAMLError as err:
        raise InvalidConfigError(f"cannot parse {where}: {yaml_problem(err)}") from None
    except RecursionError:
        raise InvalidConfigError(f"cannot parse {where}: nested too deeply") from None
    except InvalidConfigError as err:
        if str(err).startswith("cannot parse"):
            raise
        raise InvalidConfigError(f"cannot parse {where}: {err}") from None
    finally:
        loader.dispose()


def load_yaml(path: str | Path, what: str) -> Any:
    """A YAML file of the user's: UTF-8, bounded, every problem one :class:`InvalidConfigError`."""
    return parse_yaml(read_text(path, what), f"{what} {path}")
