"""Determine-Then-Ensemble: which candidates to ensemble, and why.

The paper's rule (Yao et al. 2025, Sec. 3 and Fig. 2): ensembling helps only when the
members are *compatible*; a member far weaker than the best, or one whose answers are
much longer or shorter, drags the ensemble down.  So:

1. every candidate is evaluated alone on the task's validation items;
2. the best candidate becomes the primary;
3. the others, in order of score, join if their score is within ``gap`` percentage
   points of the primary's AND their mean response length is within ``length_ratio``
   of the primary's (either way: 2.0 means between half and double).

Response length is measured in **characters** by default: token counts of different
tokenizers are not comparable (Gemma's 262k vocabulary spends fewer tokens on the same
text than SmolLM2's 49k one).  Vocabulary size is reported, never used.

:func:`select_members` is the rule as a pure function of a score table;
:func:`run_selection` is the pipeline behind ``unite select``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InvalidConfigError, InvalidInputError
from .eval.scoring import paired_difference


@dataclass
class CandidateScore:
    """One candidate evaluated alone."""

    name: str
    score: float
    """Accuracy in percent."""
    length: float
    """Mean response length (in the unit the rule uses)."""
    spec: str = ""
    n: int = 0
    mean_tokens: float = 0.0
    mean_chars: float = 0.0
    vocab_size: int = 0
    ci95: tuple[float, float] = (0.0, 0.0)


@dataclass
class Decision:
    name: str
    score: float
    length: float
    gap: float
    """Points below the primary (0 for the primary)."""
    length_ratio: float
    """max(len/primary_len, primary_len/len); 1 for the primary."""
    verdict: str
    """``primary``, ``selected`` or ``rejected``."""
    reason: str
    candidate: CandidateScore = field(repr=False, default=None)  # type: ignore[assignment]


@dataclass
class Selection:
    decisions: list[Decision]
    gap: float
    length_ratio: float

    @property
    def primary(self) -> Decision:
        return self.decisions[0]

    @property
    def selected(self) -> list[Decision]:
        return [d for d in self.decisions if d.verdict in ("primary", "selected")]

    @property
    def rejected(self) -> list[Decision]:
        return [d for d in self.decisions if d.verdict == "rejected"]

    def table(self) -> list[dict[str, Any]]:
        rows = []
        for d in self.decisions:
            c = d.candidate
            rows.append(
                {
                    "candidate": d.name,
                    "spec": c.spec if c else d.name,
                    "score": round(d.score, 2),
                    "ci95": list(c.ci95) if c else None,
                    "n": c.n if c else None,
                    "length": round(d.length, 2),
                    "mean_tokens": c.mean_tokens if c else None,
                    "mean_chars": c.mean_chars if c else None,
                    "vocab_size": c.vocab_size if c else None,
                    "gap": round(d.gap, 2),
                    "length_ratio": round(d.length_ratio, 3) if math.isfinite(d.length_ratio) else "inf",
                    "verdict": d.verdict,
                    "reason": d.reason,
                }
            )
        return rows


def _ratio(a: float, b: float) -> float:
    if a == b:
        return 1.0
    if a <= 0 or b <= 0:
        return math.inf
    return max(a / b, b / a)


def select_members(candidates: Sequence[CandidateScore], *, gap: float = 10.0, length_ratio: float = 2.0) -> Selection:
    """Apply Determine-Then-Ensemble to a score table (pure; no models).

    Ties in score keep the order the candidates were given in (the first listed becomes
    the primary), so the outcome never depends on anything but the table.
    """
    if not candidates:
        raise InvalidConfigError("selection needs at least one candidate")
    if gap < 0:
        raise InvalidConfigError(f"gap must be >= 0 points, got {gap}")
    if length_ratio < 1:
        raise InvalidConfigError(f"length ratio must be >= 1, got {length_ratio}")
    names = [c.name for c in candidates]
    if len(set(names)) != len(names):
        raise InvalidConfigError(f"candidate names must be unique, got {names}")
    ranked = sorted(candidates, key=lambda c: -c.score)  # stable: ties keep input order
    p = ranked[0]
    decisions = [Decision(p.name, p.score, p.length, 0.0, 1.0, "primary", "best score", p)]
    for c in ranked[1:]:
        g = p.score - c.score
        r = _ratio(c.length, p.length)
        if g > gap:
            verdict, reason = "rejected", f"{g:.1f} points below the primary (limit {gap:g})"
        elif r > length_ratio:
            side = "longer" if c.length > p.length else "shorter"
            verdict, reason = "rejected", f"answers {r:.2f}x {side} than the primary's (limit {length_ratio:g}x)"
        else:
            verdict, reason = "selected", f"within {gap:g} points and {length_ratio:g}x length"
        decisions.append(Decision(c.name, c.score, c.length, g, r, verdict, reason, c))
    return Selection(decisions, gap, length_ratio)


# -- the pipeline ------------------------------------------------------------------------------


@dataclass
class SelectionReport:
    task: str
    split: str
    selection: Selection
    config: Any
    verify: dict[str, Any] = field(default_factory=dict)
    tuning: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "split": self.split,
            "gap": self.selection.gap,
            "length_ratio": self.selection.length_ratio,
            "decisions": self.selection.table(),
            "verify": self.verify,
            "tuning": self.tuning,
            "config": self.config.model_dump() if self.config is not None else None,
        }


def _score_of(summary: dict[str, Any], name: str, spec: str, vocab_size: int, unit: str) -> CandidateScore:
    return CandidateScore(
        name=name,
        spec=spec,
        score=summary["accuracy"],
        length=summary["mean_chars"] if unit == "chars" else summary["mean_tokens"],
        n=summary["n"],
        mean_tokens=summary["mean_tokens"],
        mean_chars=summary["mean_chars"],
        vocab_size=vocab_size,
        ci95=tuple(summary["ci95"]),
    )


def weight_grid(n_members: int, primary_weights: Sequence[float] = (0.5, 0.6, 0.7)) -> list[list[float] | None]:
    """Equal weights first (None), then the primary (member 0) at each listed weight."""
    grid: list[list[float] | None] = [None]
    for w in primary_weights:
        if abs(w - 1 / n_members) < 1e-9:
            continue
        rest = (1 - w) / (n_members - 1)
        grid.append([w] + [round(rest, 6)] * (n_members - 1))
    return grid


def robust_grid() -> list[dict[str, Any]]:
    """The gate and weighting settings ``--tune-gate`` tries, cheapest first, after the primary
    alone: a tie keeps the earlier (cheaper) one, so the ensemble must beat the primary to be
    chosen.  ``gate 1.01`` is never closed: plain UniTE, every step ensembled."""
    grid: list[dict[str, Any]] = []
    for threshold in (0.1, 0.2, 0.3, 0.5, 1.01):
        for weighting in (None, ["floor=0.75"]):
            grid.append({"gate": threshold, "weighting": weighting})
    return grid


def _robust_label(setting: dict[str, Any] | None) -> str:
    if setting is None:
        return "primary alone"
    parts = ["always" if setting["gate"] > 1 else f"gate {setting['gate']:g}"]
    return ", ".join(parts + list(setting["weighting"] or []))


def run_selection(
    candidates: Sequence[str],
    task: str,
    *,
    limit: int | None = 50,
    seed: int = 0,
    gap: float = 10.0,
    length_ratio: float = 2.0,
    length_unit: str = "chars",
    k: int | None = None,
    method: str | None = None,
    setting: str = "paper",
    out: str | Path = "runs/select",
    verify: bool = False,
    tune_weights: bool = False,
    tune_gate: bool = False,
    split: str = "validation",
    datasets_dir: str | Path | None = None,
    progress: bool = True,
    member_options: dict[str, Any] | None = None,
    config: Any = None,
) -> SelectionReport:
    """Evaluate each candidate alone, apply the rule, optionally verify and tune.

    ``tune_weights`` tries k and the primary's weight; ``tune_gate`` tries the primary alone
    and the gates and floors of :func:`robust_grid`.  Both choose on one half of the items
    (the even positions) and report the choice against the default on the other half.

    ``config`` (an :class:`~unite_llm.config.EnsembleConfig` or a file) gives the settings the
    candidates load and ensemble with, as ``unite generate`` reads them (:mod:`unite_llm.builder`):
    member options, chat templates, gate, weighting, parallel, Ray address; its members, weights
    and primary are the selection's to decide.  ``k`` and ``method`` (None: the config's, else
    10 and unite) and ``member_options`` override it.  The written config keeps those settings
    (the gate and weighting ``tune_gate`` chose, where it ran).
    """
    from .builder import plan_ensemble, resolve_config
    from .config import EnsembleConfig
    from .eval import make_progress
    from .eval.runner import ensemble_system, run_task, single_system, summarize
    from .eval.tasks import Task

    if len(candidates) < 1:
        raise InvalidConfigError("give at least one --candidate")
    base = resolve_config(config, list(candidates)) if config is not None else EnsembleConfig(members=list(candidates))
    base = base.model_copy(update={"members": list(candidates), "weights": None, "primary": None})
    plan = plan_ensemble(base, k=k, method=method, **(member_options or {}))
    k, method = plan.ensemble["k"], plan.ensemble["method"]
    gate, weighting = plan.ensemble["gate"], plan.ensemble["weighting"]
    if length_unit not in ("chars", "tokens"):
        raise InvalidConfigError(f"length unit must be chars or tokens, got {length_unit!r}")
    if split not in ("validation", "test"):
        raise InvalidConfigError(f"split must be validation or test, got {split!r}")
    t = Task.load(task, setting=setting, datasets_dir=datasets_dir)
    use_val = split == "validation" and bool(t.spec.validation)
    split_used = "validation" if use_val else "test"
    if limit is not None and limit < 1:
        raise InvalidConfigError(f"--limit must be >= 1 (items to select on), got {limit}")
    items = t.items(limit=limit, seed=seed, validation=use_val)
    if not items:  # a "selection" from N=0 would pick every candidate on no evidence
        raise InvalidInputError(f"task {t.name}: no {split_used} items to select on (its data is empty)")
    members: list[Any] = []
    bar = make_progress(progress)
    try:
        loaded = plan.load_members()
        members = loaded.members
        by_name = {m.name: m for m in members}
        if len(by_name) != len(members):
            raise InvalidConfigError(f"candidates must be different models, got {[m.name for m in members]}")
        spec_of = {m.name: s for m, s in zip(members, candidates)}
        if bar is not None:
            bar.start()

        correct: dict[str, list[bool]] = {}  # per-item verdicts by system label, for paired comparisons

        def evaluate(system: Any, its: Sequence[Any] = items) -> dict[str, Any]:
            results = run_task(t, system, its, out, progress=bar)
            if its is items:
                correct[system.label] = [bool(r["correct"]) for r in results]
            return {**summarize(results), "label": system.label}

        scores = [_score_of(evaluate(single_system(m, k=k)), m.name, spec_of[m.name], len(m.vocab), length_unit) for m in members]
        selection = select_members(scores, gap=gap, length_ratio=length_ratio)
        chosen = [by_name[d.name] for d in selection.selected]
        lead = chosen[0].name  # the paper's primary-model mode: the output follows the primary's tokens

        def ens(ms: Sequence[Any], **kw: Any) -> Any:
            kw.setdefault("gate", gate)
            kw.setdefault("weighting", weighting)
            return ensemble_system(ms, method, k=kw.pop("k", k), primary=lead, parallel=loaded.parallel, **kw)

        verify_rows: dict[str, Any] = {}
        if verify:
            for d in selection.decisions:
                verify_rows[d.name] = {
                    "members": [d.name],
                    "label": d.name,
                    **_brief(next(s for s in scores if s.name == d.name)),
                }
            if len(chosen) > 1:
                verify_rows["selected"] = {"members": [m.name for m in chosen], **evaluate(ens(chosen))}
            for d in selection.rejected:
                extra = by_name[d.name]
                plus = [*chosen, extra]
                verify_rows[f"selected + {d.name}"] = {"members": [m.name for m in plus], **evaluate(ens(plus))}
                if len(chosen) > 1:
                    swapped = [chosen[0], extra]
                    verify_rows[f"primary + {d.name} (swapped in)"] = {
                        "members": [m.name for m in swapped],
                        **evaluate(ens(swapped)),
                    }

            ref = verify_rows.get("selected", verify_rows[lead])["label"]
            for row in verify_rows.values():
                row["delta_vs_selected"], row["delta_ci95"] = paired_difference(correct[row["label"]], correct[ref])

        weights: list[float] | None = None
        best_k = k
        tuning: dict[str, Any] = {}
        if tune_weights and len(chosen) > 1:
            tune_items, held_items = items[0::2], items[1::2]
            trials = []
            # The default (k as given, equal weights) comes first, so it wins any tie: a tuned
            # setting has to beat it on the tuning items to be chosen.
            ks = [k, *sorted({5, 10} - {k})]
            for kk, w in itertools.product(ks, weight_grid(len(chosen))):
                s = evaluate(ens(chosen, k=kk, weights=w), tune_items)
                trials.append({"k": kk, "weights": w, "accuracy": s["accuracy"], "n": s["n"]})
            # Best on the tuning half; ties go to the earlier setting (max keeps the first).
            best = max(trials, key=lambda r: r["accuracy"])
            equal = evaluate(ens(chosen), held_items)
            tuned = evaluate(ens(chosen, k=best["k"], weights=best["weights"]), held_items)
            weights, best_k = best["weights"], best["k"]
            tuning = {
                "tune_n": len(tune_items),
                "held_out_n": len(held_items),
                "trials": trials,
                "best": best,
                "held_out_equal": _brief_summary(equal),
                "held_out_tuned": _brief_summary(tuned),
                "gain_points": round(tuned["accuracy"] - equal["accuracy"], 2),
            }
        robust: dict[str, Any] | None = None  # the chosen gate/weighting; None: none or primary alone
        alone_chosen = False
        if tune_gate and len(chosen) > 1:
            tune_items, held_items = items[0::2], items[1::2]
            lead_label = single_system(by_name[lead], k=k).label
            alone_tune = [c for i, c in enumerate(correct[lead_label]) if i % 2 == 0]
            trials_g: list[dict[str, Any]] = [
                {"name": "primary alone", "accuracy": round(100 * sum(alone_tune) / len(alone_tune), 2)}
            ]
            for option in robust_grid():
                res = evaluate(ens(chosen, k=best_k, weights=weights, **option), tune_items)
                trials_g.append(
                    {"name": _robust_label(option), **option, "accuracy": res["accuracy"], "ensembled": res["mean_ensembled"]}
                )
            best_g = max(trials_g, key=lambda r: r["accuracy"])  # ties: the earlier, cheaper one
            alone_held = [c for i, c in enumerate(correct[lead_label]) if i % 2 == 1]
            if best_g["name"] == "primary alone":
                alone_chosen = True
                held_acc = 100 * sum(alone_held) / len(alone_held)
                held_diff, held_ci = 0.0, [0.0, 0.0]
            else:
                robust = {"gate": best_g["gate"] if best_g["gate"] <= 1 else None, "weighting": best_g["weighting"]}
                held_res = run_task(
                    t, ens(chosen, k=best_k, weights=weights, **best_g_setting(best_g)), held_items, out, progress=bar
                )
                held_correct = [bool(r["correct"]) for r in held_res]
                held_acc = 100 * sum(held_correct) / len(held_correct)
                held_diff, held_ci = paired_difference(held_correct, alone_held)
            tuning["gate"] = {
                "tune_n": len(tune_items),
                "held_out_n": len(held_items),
                "trials": trials_g,
                "best": best_g["name"],
                "held_out_accuracy": round(held_acc, 2),
                "held_out_primary_alone": round(100 * sum(alone_held) / len(alone_held), 2),
                "held_out_vs_primary": {"diff": held_diff, "ci95": held_ci},
            }
    finally:
        if bar is not None:
            bar.stop()
        for m in members:
            m.close()

    if alone_chosen:  # the partners did not beat the primary on the tuning items
        selected = [selection.primary]
        chosen = chosen[:1]
    else:
        selected = list(selection.selected)
    primary_name = selection.primary.name
    picked = [spec_of[d.name] for d in selected]
    names = [d.name for d in selected]
    settings = base.model_dump(include={"member_options", "chat", "parallel", "ray_address", "gate", "weighting"})
    if tune_gate and len(selection.selected) > 1:  # what the tuning chose replaces the config's own
        settings.update(gate=(robust or {}).get("gate"), weighting=(robust or {}).get("weighting") or [])
    written = EnsembleConfig(
        **settings,
        chat_templates={key: v for key, v in base.chat_templates.items() if key in picked or key in names},
        members=picked,
        weights=weights if len(chosen) > 1 else None,
        k=best_k,
        method=method,
        primary=primary_name if len(chosen) > 1 else None,
        generation={"max_new_tokens": t.max_new_tokens, "stop": t.stop},
        notes={
            "made_by": "unite select (Determine-Then-Ensemble)",
            "task": t.name,
            "setting": t.setting,
            "split": split_used,
            "n_items": len(items),
            "seed": seed,
            "gap": gap,
            "length_ratio": length_ratio,
            "length_unit": length_unit,
            "decisions": selection.table(),
            **({"tuning": {k2: _no_trials(v) for k2, v in tuning.items() if k2 != "trials"}} if tuning else {}),
        },
    )
    return SelectionReport(t.name, split_used, selection, written, verify_rows, tuning)


def best_g_setting(trial: dict[str, Any]) -> dict[str, Any]:
    """A ``--tune-gate`` trial's settings as :class:`Ensemble` keywords."""
    return {"gate": trial["gate"], "weighting": trial["weighting"]}


def _no_trials(v: Any) -> Any:
    return {k: x for k, x in v.items() if k != "trials"} if isinstance(v, dict) else v


def _brief(c: CandidateScore) -> dict[str, Any]:
    return {"n": c.n, "accuracy": c.score, "ci95": list(c.ci95), "mean_tokens": c.mean_tokens, "mean_chars": c.mean_chars}


def _brief_summary(s: dict[str, Any]) -> dict[str, Any]:
    return {k: s[k] for k in ("n", "accuracy", "ci95", "mean_tokens", "mean_chars")}


__all__ = [
    "CandidateScore",
    "Decision",
    "Selection",
    "SelectionReport",
    "paired_difference",
    "robust_grid",
    "run_selection",
    "select_members",
    "weight_grid",
]
