"""One way from an ensemble config (plus overrides) to an :class:`~unite_llm.engine.Ensemble`.

``unite generate``, ``unite serve``, ``unite eval``, ``unite select`` and lm-eval's ``unite``
model all build their ensemble here, so a config means the same thing to each:

* :func:`plan_ensemble` resolves the config and the overrides into an :class:`EnsemblePlan`
  and checks everything that needs no model (method and k, the weights' count, a primary's
  name where the specs say the member names, gate and weighting, the generation block);
* :func:`build_ensemble` loads that plan: :meth:`EnsemblePlan.load_members` (the per-member
  options, the CPU thread split or timed plan, ``n_seq``, forced chat templates:
  :func:`unite_llm.loading.load_members`) and then ``Ensemble(...)`` with the plan's settings.
  Eval and select call those two halves themselves, to share loaded members between the
  single-member and ensemble runs.

**Which config.** A config (an :class:`~unite_llm.config.EnsembleConfig` or a file) is used as
it is; with none, explicit ``members`` make a plain ``EnsembleConfig(members=...)`` (no gate,
no weighting unless overridden), and with neither the default ensemble is used
(:meth:`EnsembleConfig.default`: the default pair with its robust settings, a gate included).

**Overrides.** ``None`` means not given (the config's value stays); ``False`` for ``gate`` or
``weighting`` means off, clearing the config's; ``chat_templates`` and member options add to
the config's (a key given again wins).

**Weights.** Weights belong to the members they were given for: when ``members`` overrides a
config's member list, the config's ``weights`` are kept only if the new list is the config's own
list (same specs, same order), otherwise members weigh equally.  Weights given as an override
always apply (and must match the member count).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import EnsembleConfig
from .engine import Ensemble
from .errors import InvalidConfigError
from .loading import LoadedMembers, load_members
from .members import split_spec
from .methods import make_method
from .methods.gate import make_gate
from .methods.weighting import make_rules
from .sampling import GenerationConfig

_LOADING = ("parallel", "ray_address", "n_seq")
"""Overrides that go to :func:`load_members` (besides ``chat_templates`` and member options)."""
_ENSEMBLE = ("weights", "k", "method", "primary", "gate", "weighting", "prefix_cache")
"""Overrides that go to ``Ensemble(...)``."""


@dataclass
class EnsemblePlan:
    """An ensemble as settings, checked but not loaded (:func:`plan_ensemble`)."""

    config: EnsembleConfig
    """The config the plan started from (a file's, the default, or the ``-m`` members' plain one)."""
    specs: list[str]
    loading: dict[str, Any] = field(default_factory=dict)
    """:func:`load_members` keywords: ``parallel``, ``gate``, ``ray_address``, ``chat_templates``,
    ``n_seq`` and the member options (``n_ctx``, ``n_threads``, ...)."""
    ensemble: dict[str, Any] = field(default_factory=dict)
    """``Ensemble(...)`` keywords: ``weights``, ``k``, ``method``, ``primary``, ``gate``,
    ``weighting``, ``prefix_cache``."""

    @property
    def generation(self) -> GenerationConfig:
        """The config's ``generation`` block as a :class:`GenerationConfig` (defaults where absent)."""
        return self.config.generation_config()

    @property
    def chat(self) -> bool:
        """The config's default for chat mode."""
        return self.config.chat

    def load_members(self) -> LoadedMembers:
        """Load the members as this plan says (closed again on an error)."""
        return load_members(self.specs, **self.loading)

    def build(self, loaded: LoadedMembers | None = None) -> Ensemble:
        """The :class:`Ensemble` (``loaded``: members this plan's :meth:`load_members` loaded)."""
        loaded = loaded or self.load_members()
        try:
            return Ensemble(loaded.members, load_s=loaded.load_s, parallel=loaded.parallel, **self.ensemble)
        except BaseException:
            loaded.close()
            raise


def resolve_config(config: EnsembleConfig | str | Path | None, members: Sequence[str] | None = None) -> EnsembleConfig:
    """The config a build starts from (see the module docstring: which config)."""
    if isinstance(config, EnsembleConfig):
        return config
    if config is not None:
        return EnsembleConfig.read(config)
    if members:
        return EnsembleConfig(members=list(members))
    return EnsembleConfig.default()


def _expected_name(spec: str) -> str | None:
    """The name a member will have where its spec alone says (in-process llama.cpp specs)."""
    if split_spec(spec)[0] != "gguf":
        return None
    return Path(spec).stem if spec.endswith(".gguf") else spec


def _check_weights(weights: Sequence[float] | None, n: int) -> None:
    if weights is None:
        return
    if len(weights) != n:
        raise InvalidConfigError(f"{len(weights)} weights given for {n} members")
    if any(isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w) or w <= 0 for w in weights):
        raise InvalidConfigError(f"weights must be positive numbers, got {list(weights)}")


def _check_names(specs: Sequence[str], primary: Any, chat_templates: Mapping[str, str], options: Mapping[str, Any]) -> None:
    """A primary or a chat-template key that names no member, refused before loading where the
    specs say every member's name."""
    names = [_expected_name(s) for s in specs]
    if any(n is None for n in names) or options.get("name") is not None:
        return
    known = ", ".join(str(n) for n in names)
    if isinstance(primary, str) and primary not in names:
        raise InvalidConfigError(f"primary {primary!r} is not a member (members: {known})")
    if isinstance(primary, int) and not isinstance(primary, bool) and not 0 <= primary < len(specs):
        raise InvalidConfigError(f"primary index {primary} out of range for {len(specs)} members")
    for key in chat_templates:
        if key not in names and key not in specs:
            raise InvalidConfigError(f"--chat-template {key}=...: {key!r} is not a member (members: {known})")


def plan_ensemble(
    config: EnsembleConfig | str | Path | None = None,
    *,
    members: Sequence[str] | None = None,
    chat_templates: Mapping[str, str] | None = None,
    **overrides: Any,
) -> EnsemblePlan:
    """``config`` (a file, an :class:`EnsembleConfig`, or None) with ``members`` and
    ``overrides`` as an :class:`EnsemblePlan`, every model-free setting checked.

    ``overrides`` are ``Ensemble.load``'s keywords (``weights``, ``k``, ``method``, ``primary``,
    ``gate``, ``weighting``, ``parallel``, ``ray_address``, ``n_seq``, ``prefix_cache``) and
    member options (``n_ctx``, ``n_threads``, ...); None is not given, ``False`` turns a gate or
    weighting off (see the module docstring)."""
    if isinstance(members, str):
        raise InvalidConfigError(f"members must be a list of member specs, got a string {members!r}")
    cfg = resolve_config(config, members)
    specs = list(members) if members else list(cfg.members)
    given = {k: v for k, v in overrides.items() if v is not None}
    weights = cfg.weights if specs == list(cfg.members) else None  # the file's weights belong to its members
    ensemble: dict[str, Any] = {
        "weights": weights,
        "k": cfg.k,
        "method": cfg.method,
        "primary": cfg.primary,
        "gate": cfg.gate,
        "weighting": cfg.weighting or None,
    }
    loading: dict[str, Any] = {"parallel": cfg.parallel, "ray_address": cfg.ray_address, **cfg.member_options}
    for key, value in given.items():
        if key in _ENSEMBLE:
            ensemble[key] = value
        else:
            loading[key] = value  # _LOADING and member options
    for key in ("gate", "weighting"):  # 'off' clears what the config or the default set
        if ensemble[key] is False:
            ensemble[key] = None
    templates = {**cfg.chat_templates, **(chat_templates or {})}
    if templates:
        loading["chat_templates"] = templates
    loading["gate"] = ensemble["gate"]  # the thread plan: with a gate, one member after the other
    # Everything that needs no model, before any loads.
    if not specs:
        raise InvalidConfigError("an ensemble needs at least one member")
    k = ensemble["k"]
    if isinstance(k, bool) or not isinstance(k, int):
        raise InvalidConfigError(f"k must be an integer, got {k!r}")
    if isinstance(ensemble["method"], str):
        make_method(ensemble["method"], k=k)
    make_gate(ensemble["gate"])
    make_rules(ensemble["weighting"])
    _check_weights(ensemble["weights"], len(specs))
    options = {k2: v for k2, v in loading.items() if k2 not in (*_LOADING, "gate", "chat_templates")}
    _check_names(specs, ensemble["primary"], templates, options)
    cfg.generation_config()  # a config built in Python gets its generation block checked too
    return EnsemblePlan(cfg, specs, loading, ensemble)


def build_ensemble(
    config: EnsembleConfig | str | Path | None = None,
    *,
    members: Sequence[str] | None = None,
    chat_templates: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Ensemble:
    """The :class:`Ensemble` for ``config`` with ``members`` and ``overrides``
    (:func:`plan_ensemble`, then loaded: every model-free check comes first)."""
    return plan_ensemble(config, members=members, chat_templates=chat_templates, **overrides).build()


__all__ = [
    "EnsemblePlan",
    "LoadedMembers",
    "build_ensemble",
    "load_members",
    "plan_ensemble",
    "resolve_config",
]
