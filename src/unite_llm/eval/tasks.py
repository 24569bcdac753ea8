"""Benchmark tasks as data: a YAML file says where the items are, how a prompt is built,
how an answer is read from the output and how it is scored.

Built-in task files live next to this module in ``tasks/*.yaml`` (the paper's six
benchmarks, LAMBADA and CMMLU); ``--task path/to/my_task.yaml`` loads a user's own.
A task file::

    name: my-qa
    data:                               # the first source that exists is used
      - path: my_items.jsonl            # relative to the task file, the datasets folder, or absolute
        fields: {gold: "answers"}       # optional: Jinja expressions that make canonical fields
      - hf: {path: org/name, split: test}   # only with the optional `datasets` package
    prompt: "Question: {{ question }}\\nAnswer:"     # Jinja template of one item
    fewshot: {examples: [{question: ..., gold: ...}], answer: " {{ gold }}"}
    gold: gold                          # Jinja expression: a string or a list of aliases
    extract: {kind: first_line}         # number | letter | first_line | first_word | regex | raw
    metric: normalized_exact            # exact | normalized_exact | contains | numeric | choice
    generation: {max_new_tokens: 24, stop: ["\\n"]}
    settings: {small: {...}}            # named overrides of any of the above

The prompt is ``header + few-shot block + item``: the header and few-shot block are the
same for every item (or every item of a group, e.g. an MMLU subject), so a member's KV
cache evaluates that shared prefix once and only the question at the end is new.
"""

from __future__ import annotations

import collections
import copy
import csv
import glob
import hashlib
import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import InvalidConfigError, InvalidInputError
from ..textfiles import load_yaml, read_text, validation_problems
from . import scoring

DATASETS_ENV = "UNITE_DATASETS"


def default_datasets_dir() -> Path:
    """``$UNITE_DATASETS``, else ``../shared/datasets`` from the working directory or the repo."""
    env = os.environ.get(DATASETS_ENV)
    if env:
        return Path(env)
    for base in (Path.cwd(), Path(__file__).resolve().parents[3]):
        cand = base.parent / "shared" / "datasets"
        if cand.is_dir():
            return cand
    return Path.cwd() / "datasets"


class DataSource(BaseModel):
    """One place items may come from."""

    model_config = ConfigDict(extra="forbid")
    path: str | None = None
    """A JSONL/JSON/CSV file, a glob of them, or a directory of CSV files."""
    hf: dict[str, Any] | None = None
    """``datasets.load_dataset`` keyword arguments (path, name, split)."""
    fields: dict[str, str] = Field(default_factory=dict)
    """Canonical field -> Jinja expression over the raw record (raw fields stay visible)."""
    note: str = ""


class FewShot(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str | None = None
    """A literal few-shot block (e.g. the paper's own prompt file, inlined)."""
    text_file: str | None = None
    """A file holding the literal block (relative like data paths)."""
    source: DataSource | list[DataSource] | None = None
    """Examples drawn from a data file (the first of a list that exists) and rendered with
    the task's prompt + ``answer``."""
    examples: list[dict[str, Any]] | None = None
    n: int = Field(5, ge=0)
    match: str | None = None
    """Use only examples whose field equals the item's (MMLU: the same subject)."""
    answer: str = " {{ gold }}"
    """Template appended to an example's prompt: the demonstrated answer."""
    separator: str = "\n\n"


class TaskSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    paper_setting: str = ""
    data: list[DataSource]
    validation: list[DataSource] = Field(default_factory=list)
    id: str | None = None
    """Jinja expression for a stable item id (default: position in the file)."""
    header: str = ""
    prompt: str
    fewshot: FewShot | None = None
    gold: str = "gold"
    gold_extract: dict[str, Any] | None = None
    extract: dict[str, Any] = Field(default_factory=lambda: {"kind": "raw"})
    metric: str = "exact"
    group_by: str | None = None
    generation: dict[str, Any] = Field(default_factory=dict)
    """``max_new_tokens`` and ``stop`` (a string is one stop string, as in the API)."""
    settings: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @field_validator("generation")
    @classmethod
    def _generation(cls, v: dict[str, Any]) -> dict[str, Any]:
        """Checked as the CLI's flags are (:class:`GenerationConfig`), and a lone ``stop``
        string kept whole: ``list("Answer")`` stopped at the first ``e``."""
        from ..sampling import GenerationConfig

        unknown = sorted(set(v) - {"max_new_tokens", "stop"})
        if unknown:
            raise ValueError(f"unknown generation settings {unknown} (known: max_new_tokens, stop)")
        if isinstance(v.get("stop"), str):
            v = {**v, "stop": [v["stop"]]}
        try:
            GenerationConfig(**v)
        except InvalidConfigError as err:
            raise ValueError(str(err)) from None
        return v


@dataclass
class Item:
    """One evaluation item, ready to run."""

    id: str
    prompt: str
    gold: str | list[str]
    group: str | None = None
    fields: dict[str, Any] = field(default_factory=dict, repr=False)


# -- Jinja -------------------------------------------------------------------------------------


@lru_cache(maxsize=2)
def _env(strict: bool = True) -> Any:
    """The sandboxed Jinja environment.

    Templates are strict: a field the item lacks is an error, not an empty string that
    would give every item the same prompt and make the scores meaningless.  Field
    expressions stay lenient, because a data source's optional fields are tested there
    (``[A, B, C, D, E] | select`` drops a missing fifth choice), and :func:`evaluate`
    refuses an expression whose value is undefined.
    """
    from jinja2 import StrictUndefined, Undefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(keep_trailing_newline=True, undefined=StrictUndefined if strict else Undefined)
    env.filters["letter"] = lambda i: "ABCDEFGHIJ"[int(i)]
    return env


@lru_cache(maxsize=512)
def _template(text: str) -> Any:
    return _env(strict=True).from_string(text)


@lru_cache(maxsize=512)
def _expression(text: str) -> Any:
    return _env(strict=False).compile_expression(text)


def render(text: str, record: dict[str, Any], what: str) -> str:
    """``text`` rendered for one record; ``what`` names the task, the template and the item."""
    from jinja2 import UndefinedError

    try:
        return _template(text).render(**record, item=record)
    except UndefinedError as err:
        fields = sorted(k for k in record if not k.startswith("_"))
        raise InvalidConfigError(f"{what}: {err.message} (the item has the fields {fields})") from None
    except Exception as err:
        raise InvalidConfigError(f"{what}: cannot render template: {err}") from None


def evaluate(expr: str, record: dict[str, Any], what: str) -> Any:
    try:
        value = _expression(expr)(**record, item=record)
    except Exception as err:
        raise InvalidConfigError(f"{what}: cannot evaluate {expr!r}: {err}") from None
    if value is None or type(value).__name__ == "Undefined":
        raise InvalidInputError(f"{what}: {expr!r} is undefined for an item with fields {sorted(record)}")
    return value


# -- loading data --------------------------------------------------------------------------------


def _read_records(path: Path) -> list[dict[str, Any]]:
    if path.is_dir():
        paths = sorted(path.glob("*.csv")) + sorted(path.glob("*.jsonl"))
    elif any(ch in str(path) for ch in "*?["):
        paths = [Path(p) for p in sorted(glob.glob(str(path)))]
    else:
        paths = [path]
    out: list[dict[str, Any]] = []
    for p in paths:
        if p.suffix == ".csv":
            with p.open(encoding="utf-8", newline="") as f:
                for row in csv.DictReader(f):
                    out.append({**row, "_file": p.stem})
        elif p.suffix == ".json":
            try:
                data = json.loads(p.read_text(encoding="utf-8"))
            except json.JSONDecodeError as err:
                raise InvalidInputError(f"{p}: not valid JSON ({err.msg}, line {err.lineno})") from None
            rows = data if isinstance(data, list) else data.get("data") if isinstance(data, dict) else None
            if not isinstance(rows, list):
                raise InvalidInputError(f"{p}: expected a list of objects, or an object with a 'data' list")
            for n, r in enumerate(rows):
                if not isinstance(r, dict):
                    raise InvalidInputError(f"{p}: record {n} is {type(r).__name__}, not an object")
                out.append({**r, "_file": p.stem})
        else:
            with p.open(encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            record = json.loads(line)
                        except json.JSONDecodeError as err:
                            raise InvalidInputError(f"{p}:{n}: not valid JSON ({err.msg})") from None
                        if not isinstance(record, dict):
                            raise InvalidInputError(f"{p}:{n}: a JSONL line must be an object, got {type(record).__name__}")
                        out.append({**record, "_file": p.stem})
    return out


def read_records(path: Path) -> list[dict[str, Any]]:
    """:func:`_read_records`, with a file that is not UTF-8 named in a one-line error."""
    try:
        return _read_records(path)
    except UnicodeDecodeError as err:
        raise InvalidInputError(f"{path}: not UTF-8 text (byte 0x{err.object[err.start]:02X} at offset {err.start})") from None


def _resolve(path: str, base_dirs: list[Path]) -> Path | None:
    p = Path(path).expanduser()
    if p.is_absolute():
        cands = [p]
    else:
        cands = [b / p for b in base_dirs]
    for c in cands:
        if c.exists() or (any(ch in str(c) for ch in "*?[") and glob.glob(str(c))):
            return c
    return None


def _load_hub(datasets: Any, hf: dict[str, Any]) -> list[dict[str, Any]]:
    """``datasets.load_dataset(**hf)``; a list of config names (CMMLU's 67 subjects) loads each.

    Records of a multi-config load carry the config's name in ``_config``, as rows of a
    folder of CSV files carry their file's name in ``_file``.
    """
    names = hf.get("name")
    if not isinstance(names, list):
        return [dict(r) for r in datasets.load_dataset(**hf)]
    return [{**dict(r), "_config": n} for n in names for r in datasets.load_dataset(**{**hf, "name": n})]


def load_records(sources: list[DataSource], base_dirs: list[Path], what: str) -> tuple[list[dict[str, Any]], str]:
    """Records from the first source that exists, with canonical fields added."""
    tried = []
    for src in sources:
        records = None
        where = ""
        if src.path:
            p = _resolve(src.path, base_dirs)
            if p is None:
                tried.append(src.path)
                continue
            records, where = read_records(p), str(p)
        elif src.hf:
            try:
                import datasets
            except ImportError:
                tried.append(f"hf:{src.hf.get('path')} (the optional `datasets` package is not installed)")
                continue
            try:
                records, where = _load_hub(datasets, src.hf), f"hf:{src.hf}"
            except Exception as err:
                tried.append(f"hf:{src.hf.get('path')} ({type(err).__name__}: {err})")
                continue
        if records is None:
            continue
        for i, r in enumerate(records):
            r.setdefault("index", i)
            for name, expr in src.fields.items():
                r[name] = evaluate(expr, r, f"{what} field {name!r}")
        return records, where
    raise InvalidInputError(f"{what}: no data found (tried {', '.join(tried) or 'nothing'}; datasets folder: {base_dirs})")


# -- tasks ------------------------------------------------------------------------------------------


def builtin_tasks() -> dict[str, Path]:
    """Name -> task file for the tasks shipped with the package."""
    folder = files("unite_llm") / "eval" / "tasks"
    return {Path(str(p)).stem: Path(str(p)) for p in folder.iterdir() if str(p).endswith(".yaml")}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k not in ("fields",):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


class Task:
    """A loaded task: its spec (with a setting applied) and where relative paths point."""

    def __init__(self, spec: TaskSpec, *, setting: str = "paper", base_dirs: list[Path], source: str = "") -> None:
        self.spec = spec
        self.setting = setting
        self.base_dirs = base_dirs
        self.source = source

    @property
    def name(self) -> str:
        return self.spec.name

    @classmethod
    def load(cls, ref: str, *, setting: str = "paper", datasets_dir: str | Path | None = None) -> Task:
        """A built-in task by name, or a task file by path; ``setting`` picks a variant."""
        known = builtin_tasks()
        path = known.get(ref) or Path(ref).expanduser()
        if not path.is_file():
            raise InvalidConfigError(
                f"unknown task {ref!r}: not a task file and not a built-in (known: {', '.join(sorted(known))})"
            )
        raw = load_yaml(path, "task file")
        if not isinstance(raw, dict):
            raise InvalidConfigError(f"task file {path} must hold a mapping")
        settings = raw.get("settings") or {}
        if setting != "paper":
            if setting in settings:
                raw = _merge(raw, settings[setting])
            elif setting != "small":  # tasks without a variant run their one setting under any name
                raise InvalidConfigError(f"task {ref!r} has no setting {setting!r} (has: {', '.join(['paper', *settings])})")
        raw.setdefault("name", path.stem)
        try:
            spec = TaskSpec.model_validate(raw)
        except ValidationError as err:
            raise InvalidConfigError(f"invalid task file {path}: {validation_problems(err)}") from None
        scoring.extract(  # a bad extraction fails here, before any model runs
            spec.extract.get("kind", "raw"),
            "",
            **{k: v for k, v in spec.extract.items() if k != "kind"},
        )
        if spec.metric not in scoring.METRICS:
            raise InvalidConfigError(
                f"task {spec.name}: unknown metric {spec.metric!r} (known: {', '.join(sorted(scoring.METRICS))})"
            )
        ds = Path(datasets_dir) if datasets_dir else default_datasets_dir()
        return cls(spec, setting=setting, base_dirs=[path.parent, ds, Path.cwd()], source=str(path))

    # -- generation settings --

    @property
    def max_new_tokens(self) -> int:
        return int(self.spec.generation.get("max_new_tokens", 32))

    @property
    def stop(self) -> list[str]:
        return list(self.spec.generation.get("stop", []))

    def fingerprint(self) -> str:
        """A hash of how outputs are produced and scored: extraction, metric, generation.

        What an item *is* (its prompt, few-shot block included, and its gold) is checked
        item by item when a run resumes (``prompt_id`` and ``gold`` in each result line), so
        an edit that leaves every prompt and gold as it was, such as another data source
        or a description, does not invalidate finished results, and a changed data file does.
        """
        spec = self.spec.model_dump(include={"extract", "metric", "generation"})
        blob = json.dumps(spec, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(f"{self.setting}\n{blob}".encode()).hexdigest()[:16]

    # -- items --

    def _fewshot_block(self, record: dict[str, Any], pools: dict[str, Any]) -> str:
        fs = self.spec.fewshot
        if fs is None:
            return ""
        if fs.text is not None or fs.text_file is not None:
            if fs.text is not None:
                text = fs.text
            else:
                p = _resolve(fs.text_file or "", self.base_dirs)
                if p is None:
                    raise InvalidInputError(f"task {self.name}: few-shot file {fs.text_file} not found")
                text = read_text(p, "few-shot file")
            return text.rstrip("\n") + fs.separator
        if "examples" not in pools:
            if fs.examples is not None:
                pools["examples"] = [dict(e) for e in fs.examples]
            elif fs.source is not None:
                sources = fs.source if isinstance(fs.source, list) else [fs.source]
                pools["examples"], _ = load_records(sources, self.base_dirs, f"task {self.name} few-shot")
            else:
                pools["examples"] = []
        examples = pools["examples"]
        if fs.match:
            key = record.get(fs.match)
            examples = [e for e in examples if e.get(fs.match) == key]
        shots = []
        for n, e in enumerate(examples[: fs.n]):
            gold = evaluate(self.spec.gold, e, f"task {self.name} few-shot gold")
            e = {**e, "gold": gold[0] if isinstance(gold, list) else gold}
            what = f"task {self.name} few-shot example {e.get('index', n)}"
            shots.append(render(self.spec.prompt, e, f"{what} prompt") + render(fs.answer, e, f"{what} answer"))
        return "".join(s + fs.separator for s in shots)

    def items(self, *, limit: int | None = None, seed: int = 0, validation: bool = False) -> list[Item]:
        """The task's items; ``limit`` takes a seeded random subset in file order.

        Subsets are nested (``limit=100`` is a subset of ``limit=300`` for the same seed),
        so a run can be extended later and resume over what is done.
        """
        sources = self.spec.validation if validation and self.spec.validation else self.spec.data
        records, _ = load_records(sources, self.base_dirs, f"task {self.name}")
        order = np.arange(len(records))
        if limit is not None and limit < len(records):
            perm = np.random.default_rng(seed).permutation(len(records))
            order = np.sort(perm[:limit])
        pools: dict[str, Any] = {}
        items = []
        for i in order:
            r = records[int(i)]
            gold = evaluate(self.spec.gold, r, f"task {self.name} gold")
            if self.spec.gold_extract:
                opts = dict(self.spec.gold_extract)
                kind = opts.pop("kind")
                gold = (
                    [scoring.extract(kind, str(g), **opts) for g in gold]
                    if isinstance(gold, list)
                    else scoring.extract(kind, str(gold), **opts)
                )
            if not isinstance(gold, str):
                gold = [str(g) for g in gold]
            item_id = str(evaluate(self.spec.id, r, f"task {self.name} id")) if self.spec.id else str(r["index"])
            what = f"task {self.name} item {item_id}"
            header = render(self.spec.header, r, f"{what} header")
            own = render(self.spec.prompt, r, f"{what} prompt")  # before the shots: an error names the item
            prompt = header + self._fewshot_block(r, pools) + own
            group = str(r.get(self.spec.group_by)) if self.spec.group_by else None
            items.append(Item(item_id, prompt, gold, group, r))
        if len({i.id for i in items}) != len(items):
            dupes = sorted(k for k, n in collections.Counter(i.id for i in items).items() if n > 1)
            shown = ", ".join(repr(d) for d in dupes[:5]) + (f" and {len(dupes) - 5} more" if len(dupes) > 5 else "")
            raise InvalidInputError(
                f"task {self.name}: item ids must be unique (a run resumes by id), but {shown} "
                f"{'occurs' if len(dupes) == 1 else 'occur'} more than once; fix the data or the task's id expression"
            )
        return items

    def extract(self, output: str) -> str:
        opts = dict(self.spec.extract)
        return scoring.extract(opts.pop("kind", "raw"), output, **opts)

    def score(self, extracted: str, gold: str | list[str]) -> bool:
        return scoring.score(self.spec.metric, extracted, gold)


PAPER_TASKS = ("gsm8k", "triviaqa", "nq", "arc_challenge", "piqa", "mmlu")
RESULT_TASKS = (*PAPER_TASKS, "lambada")
