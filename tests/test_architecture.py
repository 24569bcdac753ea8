"""Structure the code promises: no import cycle, one decode loop, methods apart from it."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "unite_llm"


def _modules() -> dict[str, tuple[Path, bool]]:
    found = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return found


def _type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, base: list[str]) -> set[str]:
    """Absolute names of everything imported in ``tree`` outside ``if TYPE_CHECKING``."""
    targets: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child):
                for c in child.orelse:
                    visit(c)
                continue
            if isinstance(child, ast.Import):
                targets.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                prefix = base[: len(base) - child.level + 1] if child.level else []
                target = ".".join(prefix + ([child.module] if child.module else []))
                targets.add(target)
                targets.update(f"{target}.{a.name}" for a in child.names)
            visit(child)

    visit(tree)
    return targets


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports at run time, at any depth (function
    bodies included, ``if TYPE_CHECKING`` blocks not), with the packages whose
    ``__init__`` such an import runs."""
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, (path, is_pkg) in mods.items():
        base = name.split(".") if is_pkg else name.split(".")[:-1]
        targets = _imports(ast.parse(path.read_text(encoding="utf-8")), base)
        deps: set[str] = set()
        for t in targets:
            parts = t.split(".")
            for i in range(1, len(parts) + 1):
                m = ".".join(parts[:i])
                if m in mods and m != name and not name.startswith(m + "."):
                    deps.add(m)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return out


def test_the_checker_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_in_the_package():
    assert cycles(import_graph()) == []


def test_no_step_method_imports_the_decode_loop():
    graph = import_graph()
    for name, deps in graph.items():
        if name.startswith(f"{PACKAGE}.methods"):
            assert not deps & {f"{PACKAGE}.engine", f"{PACKAGE}.rank"}, name


def test_the_decode_loop_exists_once():
    """Only the engine's batch module chooses candidates and checks stop strings (the two
    things every copy of a loop does); any other caller goes through Ensemble."""
    callers = set()
    for path in (SRC / PACKAGE).rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in {"choose", "StopStrings"}:
                callers.add(path.relative_to(SRC / PACKAGE).as_posix())
    assert callers == {"engine/batch.py"}


def test_members_import_nothing_from_the_step_methods():
    """Members sit below the step methods (issue 27 item 3): what both need (candidates, END,
    the vocabulary) lives beside the vocabulary, so a member never imports ``methods``."""
    graph = import_graph()
    members = [name for name in graph if name == f"{PACKAGE}.members" or name.startswith(f"{PACKAGE}.members.")]
    assert members, "no member modules found"
    for name in members:
        bad = {d for d in graph[name] if d == f"{PACKAGE}.methods" or d.startswith(f"{PACKAGE}.methods.")}
        assert not bad, f"{name} imports {sorted(bad)}"


def test_the_import_rule_checker_sees_a_function_body_import(tmp_path):
    tree = ast.parse("def f():\n    from ..methods.base import END\n")
    assert "unite_llm.methods.base" in _imports(tree, ["unite_llm", "members"])


def test_only_the_engine_reads_the_ensembles_turn_owner():
    """The ensemble's turn is read through ``Ensemble.in_turn()`` / ``exclusive()``: no other
    module reaches into ``_owner``, and the server's worker keeps no second lock beside it."""
    readers = set()
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if any(isinstance(n, ast.Attribute) and n.attr == "_owner" for n in ast.walk(tree)):
            readers.add(path.relative_to(SRC / PACKAGE).as_posix())
    assert readers == {"engine/core.py"}


def test_the_engine_probes_no_member_ability():
    """Members declare their abilities (``MemberBase``, checked at load): nothing in
    ``engine/`` asks an object what it has with ``getattr`` or ``hasattr``."""
    probes = []
    for path in sorted((SRC / PACKAGE / "engine").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in {"getattr", "hasattr"}:
                probes.append(f"{path.name}:{node.lineno}")
    assert probes == []


def test_the_loop_drives_the_core_through_its_public_operations():
    """``DecodeBatch`` and ``drive`` use the core through its public names only (``forward``,
    ``step``, ``record``, ``append``, ...): no ``core._x`` or ``ensemble._x`` outside core.py."""
    reached = []
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        if path.relative_to(SRC / PACKAGE).as_posix() == "engine/core.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and isinstance(node.value, ast.Attribute | ast.Name)
                and (node.value.attr if isinstance(node.value, ast.Attribute) else node.value.id)
                in {"core", "engine", "ensemble", "ens"}
            ):
                reached.append(f"{path.relative_to(SRC / PACKAGE).as_posix()}:{node.lineno} .{node.attr}")
    assert reached == []
