"""Member backends, chosen by the prefix of a model spec.

``path/to/model.gguf`` or an alias         -> llama.cpp (this package's default)
``hf:<hub-id-or-dir>`` / ``hf:<file>.gguf``  -> transformers (extra ``unite-llm[hf]``)
``<prefix>:<rest>``                         -> the loader registered for ``prefix``

Loaders are registered here or by other packages through the ``unite_llm.members``
entry-point group (as ``llm`` plugins add models): ``name = "module:function"``, where
the function takes the rest of the spec and keyword options and returns a Member.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from ..errors import InvalidConfigError, ModelNotFoundError
from .base import (
    HOOKS,
    BatchMember,
    Member,
    MemberBase,
    abilities,
    batch_rows,
    can,
    check_abilities,
    check_context,
    common_prefix,
    forward_rows,
    log_softmax,
    supports_batch,
)

Loader = Callable[..., Member]

# prefix -> "module:attribute"; imported lazily so torch/ray load only when used.
BUILTIN_LOADERS: dict[str, str] = {
    "gguf": "unite_llm.members.llama_cpp:LlamaCppMember",
    "hf": "unite_llm.members.transformers:TransformersMember",
    "styled": "unite_llm.members.styled:StyledMember",
    "ray": "unite_llm.members.ray_member:RayMember",
    "openai": "unite_llm.members.openai:load",
}


def _loaders() -> dict[str, str]:
    found = dict(BUILTIN_LOADERS)
    for ep in entry_points(group="unite_llm.members"):
        found.setdefault(ep.name, ep.value)
    return found


def _import(target: str) -> Loader:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def split_spec(spec: str) -> tuple[str, str]:
    """``"hf:org/model"`` -> ``("hf", "org/model")``; plain paths and aliases -> gguf."""
    prefix, sep, rest = spec.partition(":")
    if sep and prefix in _loaders() and not (len(prefix) == 1 and rest.startswith("\\")):
        return prefix, rest
    return "gguf", spec


def load_member(spec: str, **options: Any) -> Member:
    """Load one member from a spec string (see the module docstring)."""
    prefix, rest = split_spec(spec)
    loaders = _loaders()
    if prefix not in loaders:
        raise ModelNotFoundError(f"no member backend for {spec!r} (known prefixes: {', '.join(sorted(loaders))})")
    options.setdefault("name", None)
    loader = _import(loaders[prefix])
    _check_options(loader, spec, options)
    member = loader(rest, **options)
    try:
        check_abilities(member)  # a declared hook it lacks fails here, not mid-generation
    except BaseException:
        member.close()
        raise
    return member


def _check_options(loader: Loader, spec: str, options: dict[str, Any]) -> None:
    """An option the backend does not take (a config's ``member_options``) is a user error
    naming it and the ones it takes, not a ``TypeError`` from deep inside."""
    try:
        params = inspect.signature(loader).parameters
    except (TypeError, ValueError):  # a builtin or C callable: let it judge for itself
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    named = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = sorted(set(options) - set(named[1:]))  # the first takes the spec itself
    if unknown:
        known = ", ".join(sorted(set(named[1:]) - {"name"}))
        raise InvalidConfigError(f"member option(s) {', '.join(unknown)} not understood by {spec!r} (its options: {known})")


__all__ = [
    "HOOKS",
    "BatchMember",
    "Member",
    "MemberBase",
    "abilities",
    "batch_rows",
    "can",
    "check_abilities",
    "check_context",
    "common_prefix",
    "forward_rows",
    "load_member",
    "log_softmax",
    "split_spec",
    "supports_batch",
]
