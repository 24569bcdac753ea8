"""Running a task on a system (one member alone, or an ensemble), safely and visibly.

Every finished item is appended to ``OUT/<task>/<system>.jsonl`` as one line, flushed
and fsynced before the next item starts.  Re-running the same command reads that file
and skips the ids it holds, so:

* a run killed at any moment (even SIGKILL) loses at most the item in flight: a line
  cut off mid-write is the only possible damage, and it is dropped on the next start;
* an item is never recorded twice: ids already present are skipped, and an exclusive
  lock on ``<system>.meta.json`` stops two runs from writing the same file.

``<system>.meta.json`` records the settings the lines were produced with (task
fingerprint, members, method, k, weights); resuming with different settings is an
error instead of a silently mixed file.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..engine import Ensemble
from ..errors import ContextLengthError, InvalidConfigError, InvalidInputError
from ..members import Member
from ..sampling import GenerationConfig
from .scoring import wilson_interval
from .tasks import Item, Task

SINGLE = "single"
ON_ERROR = ("stop", "skip")
"""What an item the system cannot run (a prompt over a member's context, text it refuses) does:
``stop`` the run with an error naming the item, or ``skip`` it, recorded as incorrect with its
``"error"`` (counted as ``errors`` in the summary)."""
ITEM_ERRORS = (ContextLengthError, InvalidInputError)


@dataclass
class System:
    """Something to evaluate: a label, how it was built, and the ensemble that runs it."""

    label: str
    method: str
    ensemble: Ensemble
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def members(self) -> list[str]:
        return self.ensemble.names

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9._+=@-]+", "_", self.label)


def check_out_dir(out: str | Path) -> Path:
    """The results folder, created now: a file in its place or a folder that cannot be written
    is a one-line error before any model runs, not an ``OSError`` after the first item."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise InvalidConfigError(f"--out {path}: not a folder (a file is in the way)")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".unite-write-check-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise InvalidConfigError(f"--out {path}: cannot write there ({err.strerror or err})") from None
    return path


def member_identity(m: Member) -> str:
    """What a member is, for the run key: its name and model file when it has one.

    The file is named by its base name and size, not its full path, so a results folder
    resumes from another checkout or virtual environment holding the same model file.
    """
    path = getattr(m, "path", None)
    if not path:
        return m.name
    extra = getattr(m, "style", None)
    p = Path(path)
    size = p.stat().st_size if p.is_file() else None
    return f"{m.name}|{p.name}:{size}|{extra}"


def single_system(member: Member, *, k: int = 10) -> System:
    """One member alone: a one-member ensemble decodes exactly as the model does."""
    ens = Ensemble([member], k=k)
    return System(member.name, SINGLE, ens, {"members": [member_identity(member)], "k": k})


def ensemble_system(
    members: Sequence[Member],
    method: str = "unite",
    *,
    k: int = 10,
    weights: Sequence[float] | None = None,
    primary: str | None = None,
    label: str | None = None,
    gate: Any = None,
    weighting: Any = None,
    parallel: bool | None = None,
) -> System:
    """The ensemble of ``members`` (loaded once, shared between systems: see
    :meth:`unite_llm.builder.EnsemblePlan.load_members`); ``parallel`` is the thread plan's
    decision (default: threads when there are several members)."""
    ens = Ensemble(
        list(members), weights=weights, k=k, method=method, primary=primary, gate=gate, weighting=weighting, parallel=parallel
    )
    settings: dict[str, Any] = {
        "members": [member_identity(m) for m in members],
        "method": method,
        "k": k,
        "weights": [round(float(w), 6) for w in ens.weights],
        "primary": primary,
    }
    if ens.gate is not None:  # only when set, so results stored before gates existed still resume
        settings["gate"] = {"threshold": ens.gate.threshold, "signal": ens.gate.signal}
    if ens.weighting:
        settings["weighting"] = [r.spec() for r in ens.weighting]
    if label is None:
        # Settings other than the defaults are part of the label, so each gets its own results file.
        extra = [f"k={k}"] if k != 10 else []
        if weights is not None and len({round(float(w), 6) for w in ens.weights}) > 1:
            extra.append("w=" + "/".join(f"{w:.2f}" for w in ens.weights))
        if primary is not None:
            extra.append(f"primary={primary}")
        if ens.gate is not None:
            extra.append(f"gate={'' if ens.gate.signal == 'top1' else ens.gate.signal + '='}{ens.gate.threshold:g}")
        if ens.weighting:
            extra.extend(r.spec() for r in ens.weighting)
        label = f"{method}({'+'.join(m.name for m in members)})" + (f"[{','.join(extra)}]" if extra else "")
    return System(label, method, ens, settings)


def build_systems(
    members: Sequence[Member],
    methods: Sequence[str],
    *,
    k: int = 10,
    weights: Sequence[float] | None = None,
    primary: str | None = None,
    gate: Any = None,
    weighting: Any = None,
    parallel: bool | None = None,
) -> list[System]:
    """``single`` -> one system per member; any other method -> the ensemble of all members
    (``parallel``: the thread plan's decision, :class:`~unite_llm.loading.LoadedMembers`)."""
    from ..methods import METHODS

    systems: list[System] = []
    for method in methods:
        if method == SINGLE:
            systems.extend(single_system(m, k=k) for m in members)
        elif method in METHODS:
            if len(members) < 2:
                raise InvalidConfigError(f"method {method!r} needs at least two members")
            systems.append(
                ensemble_system(
                    members, method, k=k, weights=weights, primary=primary, gate=gate, weighting=weighting, parallel=parallel
                )
            )
        else:
            known = ", ".join([SINGLE, *sorted(METHODS)])
            raise InvalidConfigError(f"unknown method {method!r} (known: {known})")
    return systems


# -- the per-item results file ------------------------------------------------------------------


_NUMBERS = ("tokens", "chars", "time_s", "mean_union")


def result_problem(rec: Any) -> str | None:
    """Why a parsed line is not a result this runner wrote, or None when it is one.

    Resuming trusts every line it keeps (ids are skipped, ``correct`` is summed, the
    numbers are averaged), so anything else is damage to report, not to crash on.
    """
    if not isinstance(rec, dict):
        return f"a JSON {type(rec).__name__}, not an object"
    rid = rec.get("id")
    if rid is None:
        return 'no "id"'
    if isinstance(rid, bool) or not isinstance(rid, str | int):
        return f'"id" is {rid!r}, not a string'
    if not isinstance(rec.get("correct"), bool):
        return f'"correct" is {rec.get("correct")!r}, not true or false'
    for key in _NUMBERS:
        v = rec.get(key, 0)
        if isinstance(v, bool) or not isinstance(v, int | float):
            return f'"{key}" is {v!r}, not a number'
    return None


def _damaged_path(path: Path) -> Path:
    return path.with_name(path.name + ".damaged")


def read_results(path: Path, *, repair: bool = True, drop_damaged: bool = False) -> dict[str, dict[str, Any]]:
    """Finished items by id.  A last line cut off by a kill is dropped (and cut from the file).

    Any other line that is not a result (not JSON, not an object, no ``id``, ...) is
    damage: an error naming the file and line, or with ``drop_damaged`` (and ``repair``)
    the damaged lines are appended to ``<file>.damaged`` and removed from the file, so the
    run continues and nothing is lost.
    """
    if not path.is_file():
        return {}
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        if repair:
            with path.open("r+b") as f:
                f.truncate(cut)
        data = data[:cut]
    out: dict[str, dict[str, Any]] = {}
    good: list[bytes] = []
    damaged: list[tuple[int, bytes, str]] = []
    for n, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        problem: str | None
        try:
            rec = json.loads(line)
        except ValueError as err:  # JSONDecodeError, or bytes that are not UTF-8
            rec, problem = None, f"not valid JSON ({err.__class__.__name__}: {err})"
        else:
            problem = result_problem(rec)
        if problem is not None:
            damaged.append((n, line, problem))
            continue
        good.append(line)
        out.setdefault(str(rec["id"]), rec)
    if damaged and not (drop_damaged and repair):
        n, _, problem = damaged[0]
        more = f" ({len(damaged)} damaged lines in all)" if len(damaged) > 1 else ""
        raise InvalidConfigError(
            f"{path}:{n} is not a result line: {problem}{more}; fix or remove it, or re-run with --drop-damaged "
            f"to move damaged lines to {_damaged_path(path).name} and continue"
        )
    if damaged:
        target = path.resolve()  # through a symlink (results shared between folders)
        with _damaged_path(target).open("ab") as f:  # first the copy, so a kill in between loses nothing
            f.write(b"".join(line + b"\n" for _, line, _ in damaged))
            f.flush()
            os.fsync(f.fileno())
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_bytes(b"".join(line + b"\n" for line in good))
        os.replace(tmp, target)
    return out


def _read_meta(meta_path: Path, old: bytes) -> dict[str, Any] | None:
    """The settings stored in a meta file; None when it is damaged (not a JSON object)."""
    try:
        previous = json.loads(old)
    except ValueError:
        return None
    return previous if isinstance(previous, dict) else None


@contextmanager
def _locked_run(meta_path: Path, meta: dict[str, Any], *, overwrite: bool) -> Iterator[None]:
    meta_path.parent.mkdir(parents=True, exist_ok=True)
    meta = json.loads(json.dumps(meta))  # tuples -> lists, as the file will read back
    fd = os.open(meta_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InvalidConfigError(f"another run is writing {meta_path.parent}; wait for it or use another --out") from None
        old = os.read(fd, 1 << 20)
        jsonl = meta_path.parent / (meta_path.name.removesuffix(".meta.json") + ".jsonl")
        previous = _read_meta(meta_path, old) if old.strip() else meta
        if previous is None:
            # Which settings made the lines is unknown, so they can be neither trusted nor
            # mixed with new ones.  With no results there is nothing to lose: rebuild it.
            if jsonl.is_file() and jsonl.stat().st_size:
                if not overwrite:
                    raise InvalidConfigError(
                        f"{meta_path} is damaged (not a JSON object), so the settings that made {jsonl.name} are "
                        "unknown; restore it, use another --out, or --overwrite to discard those results"
                    )
                jsonl.unlink()
        elif previous != meta and not overwrite:
            diff = sorted(k for k in set(previous) | set(meta) if previous.get(k) != meta.get(k))
            raise InvalidConfigError(
                f"{jsonl} holds results of other settings (differs in: {', '.join(diff)}); use another --out or --overwrite"
            )
        elif previous != meta:
            jsonl.unlink(missing_ok=True)
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(meta, indent=1, sort_keys=True) + "\n").encode())
        os.fsync(fd)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _append(f: Any, record: dict[str, Any]) -> None:
    f.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
    f.flush()
    os.fsync(f.fileno())


def prompt_id(item: Item) -> str:
    return hashlib.sha256(item.prompt.encode()).hexdigest()[:12]


def stale_results(done: dict[str, dict[str, Any]], items: Sequence[Item]) -> list[str]:
    """Ids of finished lines that are not about this run's item: another prompt or gold.

    A changed data file, template or few-shot block would otherwise mix old answers to
    other prompts into the new summary without a word.
    """
    return [
        it.id
        for it in items
        if it.id in done and (done[it.id].get("prompt_id") != prompt_id(it) or done[it.id].get("gold") != it.gold)
    ]


def run_items(task: Task, system: System, items: Sequence[Item], gen: GenerationConfig) -> list[dict[str, Any]]:
    """Generate, extract and score ``items`` as one batch (one item: an unbatched decode).

    A batch decodes together where every member can (:meth:`Ensemble.generate_batch`); each
    record's ``time_s`` is then the batch's time shared equally between its items.
    """
    t0 = time.perf_counter()
    outs = system.ensemble.generate_batch([it.prompt for it in items], gen)
    elapsed = (time.perf_counter() - t0) / len(items)
    records = []
    for item, out in zip(items, outs):
        extracted = task.extract(out.text)
        correct = task.score(extracted, item.gold)
        unions = [s.union_size for s in out.steps]
        records.append(
            {
                "id": item.id,
                "prompt_id": prompt_id(item),
                "group": item.group,
                "output": out.text,
                "extracted": extracted,
                "gold": item.gold,
                "correct": bool(correct),
                "tokens": len(out.steps),
                "chars": len(out.text),
                "finish_reason": out.finish_reason,
                "time_s": round(elapsed, 4),
                "mean_union": round(sum(unions) / len(unions), 3) if unions else 0.0,
                # the fraction of steps on which every member was consulted (below 1: a gate)
                "ensembled": round(sum(s.ensembled for s in out.steps) / len(out.steps), 3) if out.steps else 1.0,
            }
        )
    return records


def error_record(item: Item, err: Exception) -> dict[str, Any]:
    """The line of an item skipped by ``on_error="skip"``: incorrect, no output, and why."""
    return {
        "id": item.id,
        "prompt_id": prompt_id(item),
        "group": item.group,
        "output": "",
        "extracted": "",
        "gold": item.gold,
        "correct": False,
        "tokens": 0,
        "chars": 0,
        "finish_reason": "error",
        "time_s": 0.0,
        "mean_union": 0.0,
        "ensembled": 1.0,
        "error": str(err),
    }


def run_group(task: Task, system: System, items: Sequence[Item], gen: GenerationConfig, on_error: str) -> list[dict[str, Any]]:
    """:func:`run_items`, where an item the system cannot run stops the run with an error naming
    it or (``on_error="skip"``) is recorded by :func:`error_record`; in a batch that fails,
    each item runs alone, so one bad item never costs its neighbours their results."""
    try:
        return run_items(task, system, items, gen)
    except ITEM_ERRORS as err:
        if len(items) > 1:
            return [rec for it in items for rec in run_group(task, system, [it], gen, on_error)]
        item = items[0]
        shown_id = repr(item.id) if len(item.id) <= 60 else repr(item.id[:57] + "...")
        if on_error == "skip":
            return [error_record(item, err)]
        raise type(err)(
            f"task {task.name}, item {shown_id} ({system.label}): {err} (fix or drop the item; on_error='skip' "
            "records such items as incorrect and goes on)"
        ) from None


def run_task(
    task: Task,
    system: System,
    items: Sequence[Item],
    out_dir: str | Path,
    *,
    progress: Any = None,
    overwrite: bool = False,
    max_new_tokens: int | None = None,
    drop_damaged: bool = False,
    batch_size: int = 1,
    on_error: str = "stop",
) -> list[dict[str, Any]]:
    """Evaluate ``items`` (resuming), returning their results in item order.

    ``on_error`` (:data:`ON_ERROR`) is what an item the system cannot run does: ``stop`` with
    an error naming it (the items before it are kept), or ``skip`` it, recorded as incorrect.

    ``drop_damaged`` moves result lines that cannot be read to a side file and continues
    (see :func:`read_results`); without it such a line is an error.  ``batch_size`` items
    decode at once (members that batch; llama.cpp members need ``n_seq >= batch_size``);
    each batch's lines are appended when it finishes, so a resumed run loses at most one batch.
    """
    if batch_size < 1:
        raise InvalidConfigError(f"batch_size must be >= 1, got {batch_size}")
    check_on_error(on_error)
    folder = Path(out_dir) / task.name
    jsonl = folder / f"{system.slug}.jsonl"
    meta = {
        "task": task.name,
        "setting": task.setting,
        "task_fingerprint": task.fingerprint(),
        "system": system.label,
        "method": system.method,
        **system.settings,
        "max_new_tokens": max_new_tokens or task.max_new_tokens,
        "stop": task.stop,
    }
    gen = GenerationConfig(max_new_tokens=max_new_tokens or task.max_new_tokens, stop=tuple(task.stop))
    with _locked_run(folder / f"{system.slug}.meta.json", meta, overwrite=overwrite):
        done = read_results(jsonl, drop_damaged=drop_damaged)
        stale = stale_results(done, items)
        if stale and not overwrite:
            raise InvalidConfigError(
                f"{jsonl} holds results for {len(stale)} item(s) whose prompt or gold has changed since "
                f"(first: id {stale[0]}); use another --out or --overwrite"
            )
        if stale:  # --overwrite: those items run again; every other finished line is kept
            for i in stale:
                del done[i]
            target = jsonl.resolve()  # through a symlink (results shared between folders)
            tmp = target.with_name(target.name + ".tmp")
            tmp.write_bytes(b"".join((json.dumps(r, ensure_ascii=False) + "\n").encode() for r in done.values()))
            os.replace(tmp, target)  # a kill leaves the old file or the new one, never half of either
        # Items sharing a few-shot prefix run back to back, so each member keeps that prefix in
        # its KV cache (MMLU's per-subject shots, GSM8K's chain-of-thought examples); results are
        # still returned and reported in item order.
        todo = sorted((it for it in items if it.id not in done), key=lambda it: it.prompt)
        results = [done[it.id] for it in items if it.id in done]
        correct = sum(r["correct"] for r in results)
        bar = None
        if progress is not None:
            bar = progress.add_task(_describe(task, system, correct, len(results)), total=len(items), completed=len(results))
        with jsonl.open("ab") as f:
            for start in range(0, len(todo), batch_size):
                group = todo[start : start + batch_size]
                for item, rec in zip(group, run_group(task, system, group, gen, on_error)):
                    _append(f, rec)
                    done[item.id] = rec
                    correct += rec["correct"]
                if bar is not None:
                    progress.update(bar, advance=len(group), description=_describe(task, system, correct, len(done)))
        if bar is not None:
            progress.update(bar, description=_describe(task, system, correct, len(items)))
    return [done[it.id] for it in items]


def check_on_error(on_error: Any) -> str:
    if on_error not in ON_ERROR:
        raise InvalidConfigError(f"on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
    return str(on_error)


def _describe(task: Task, system: System, correct: int, n: int) -> str:
    acc = f"{100 * correct / n:5.1f}%" if n else "  -  "
    return f"{task.name:<13} {system.label[:34]:<34} acc {acc}"


def summarize(results: Sequence[dict[str, Any]], *, by_group: bool = False) -> dict[str, Any]:
    """Accuracy with a 95 % Wilson interval, and the mean cost and length of a response."""
    n = len(results)
    c = sum(bool(r["correct"]) for r in results)
    lo, hi = wilson_interval(c, n)

    def mean(key: str) -> float:
        return round(sum(float(r.get(key, 0.0)) for r in results) / n, 4) if n else 0.0

    out: dict[str, Any] = {
        "n": n,
        "correct": c,
        "accuracy": round(100 * c / n, 2) if n else 0.0,
        "ci95": [round(100 * lo, 2), round(100 * hi, 2)],
        "mean_tokens": mean("tokens"),
        "mean_chars": mean("chars"),
        "mean_time_s": mean("time_s"),
        "mean_union": mean("mean_union"),
        "mean_ensembled": round(sum(float(r.get("ensembled", 1.0)) for r in results) / n, 4) if n else 0.0,
        "empty_answers": sum(1 for r in results if not r.get("extracted")),
        "errors": sum(1 for r in results if r.get("error")),  # items skipped by on_error="skip"
    }
    if by_group:
        groups: dict[str, list[dict[str, Any]]] = {}
        for r in results:
            groups.setdefault(str(r.get("group")), []).append(r)
        out["groups"] = {
            g: {"n": len(rs), "accuracy": round(100 * sum(bool(r["correct"]) for r in rs) / len(rs), 2)}
            for g, rs in sorted(groups.items())
        }
    return out
