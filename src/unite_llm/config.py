"""Ensemble config files (JSON, YAML or TOML), as written by ``unite select``.

One file says everything needed to rebuild an ensemble: members, weights, k, method,
primary, chat templates, gate, weighting, member options, and default generation settings.
``unite generate/serve/eval/select --config FILE`` and lm-eval's ``unite`` model
(``config=FILE``) read it through one builder (:mod:`unite_llm.builder`); command-line flags
override it.  The ``generation`` block (``max_new_tokens``, ``stop``, ``temperature``, ``top_p``,
``seed``, ``ignore_eos``) is checked when the file is read, and generate and serve take it as
their defaults.
"""

from __future__ import annotations

import json
import math
import os
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import InvalidConfigError

if TYPE_CHECKING:
    from .sampling import GenerationConfig

GENERATION_KEYS = ("max_new_tokens", "temperature", "top_p", "seed", "stop", "ignore_eos")
"""What a config's ``generation`` block may set (:class:`~unite_llm.sampling.GenerationConfig` fields)."""


def check_generation(block: Any) -> Any:
    """A ``generation`` block's problem as a ``ValueError`` naming the key (``generation.temperature:
    temperature must be a number, got 'hot'``); the block itself when it is fine."""
    from .sampling import GenerationConfig

    if not isinstance(block, dict):
        raise ValueError(f"generation must be a mapping of {', '.join(GENERATION_KEYS)}, got {block!r}")
    for key, value in block.items():
        if key not in GENERATION_KEYS:
            raise ValueError(f"generation.{key} is not a generation setting (known: {', '.join(GENERATION_KEYS)})")
        try:
            GenerationConfig(**{key: value})
        except InvalidConfigError as err:
            raise ValueError(f"generation.{key}: {err}") from None
    try:
        GenerationConfig(**block)
    except InvalidConfigError as err:
        raise ValueError(f"generation: {err}") from None
    return block


class EnsembleConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    members: list[str] = Field(min_length=1, description="member specs: .gguf paths, aliases, prefix:...")
    weights: list[float] | None = None
    k: int = Field(10, ge=1)
    method: str = "unite"
    primary: str | None = None
    member_options: dict[str, Any] = Field(default_factory=dict, description="keyword options for every member")
    chat: bool = False
    chat_templates: dict[str, str] = Field(
        default_factory=dict, description="member name or spec -> chat template forced on it (builtin name, file, Jinja)"
    )
    parallel: bool | None = Field(None, description="step members in threads (default: when there are several)")
    ray_address: str | None = Field(None, description="Ray cluster for ray: members (default: a local one)")
    gate: float | dict[str, Any] | None = Field(
        None,
        description="consult the partners only where the primary's top-1 probability is below this "
        "(or {threshold, signal: top1|margin}); None: every step",
    )
    weighting: list[str] = Field(default_factory=list, description="per-step weighting rules, e.g. ['floor=0.6', 'entropy']")
    generation: dict[str, Any] = Field(
        default_factory=dict,
        description="GenerationConfig defaults for generate and serve (max_new_tokens, stop, temperature, top_p, seed, "
        "ignore_eos); command-line flags and request fields override them",
    )
    notes: dict[str, Any] = Field(default_factory=dict, description="free-form provenance (e.g. selection table)")

    @field_validator("weights")
    @classmethod
    def _positive(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and any(not math.isfinite(w) or w <= 0 for w in v):
            raise ValueError("weights must be positive finite numbers")
        return v

    def ensemble_kwargs(self) -> dict[str, Any]:
        return {
            "specs": self.members,
            "weights": self.weights,
            "k": self.k,
            "method": self.method,
            "primary": self.primary,
            "parallel": self.parallel,
            "ray_address": self.ray_address,
            "chat_templates": self.chat_templates,
            "gate": self.gate,
            "weighting": self.weighting or None,
            **self.member_options,
        }

    @field_validator("generation")
    @classmethod
    def _generation(cls, v: dict[str, Any]) -> dict[str, Any]:
        return check_generation(v)

    def generation_config(self, **overrides: Any) -> GenerationConfig:
        """The ``generation`` block as a :class:`~unite_llm.sampling.GenerationConfig`, with
        ``overrides`` (None: not given) on top; fields it does not set keep their defaults."""
        from .sampling import GenerationConfig

        block = dict(self.generation)
        if "stop" in block and isinstance(block["stop"], list):
            block["stop"] = tuple(block["stop"])
        return GenerationConfig(**(block | {k: v for k, v in overrides.items() if v is not None}))

    @field_validator("gate")
    @classmethod
    def _gate(cls, v: float | dict[str, Any] | None) -> float | dict[str, Any] | None:
        from .methods.gate import make_gate

        try:
            make_gate(v)
        except InvalidConfigError as err:
            raise ValueError(str(err)) from None
        return v

    @field_validator("weighting")
    @classmethod
    def _weighting(cls, v: list[str]) -> list[str]:
        from .methods.weighting import make_rules

        try:
            make_rules(v)
        except InvalidConfigError as err:
            raise ValueError(str(err)) from None
        return v

    @classmethod
    def default(cls) -> EnsembleConfig:
        """The ensemble used when nothing is said: the default pair with its robust settings
        (:data:`unite_llm.models.DEFAULT_SETTINGS`, chosen by measurement, see docs/robust.md)."""
        from .models import DEFAULT_ENSEMBLE, DEFAULT_SETTINGS

        return cls(members=list(DEFAULT_ENSEMBLE), **DEFAULT_SETTINGS)

    @classmethod
    def read(cls, path: str | Path) -> EnsembleConfig:
        from .textfiles import parse_yaml, read_text

        path = Path(path)
        if not path.is_file():
            raise InvalidConfigError(f"config file not found: {path}")
        text = read_text(path, "config file")
        if path.suffix in (".yaml", ".yml"):
            data = parse_yaml(text, str(path))  # aliases bounded: an alias bomb is refused at once
            return cls.parse(data, path)
        try:
            if path.suffix == ".toml":
                data = tomllib.loads(text)
            else:
                data = json.loads(text)
        except Exception as err:
            raise InvalidConfigError(f"cannot parse {path}: {err}") from None
        return cls.parse(data, path)

    @classmethod
    def parse(cls, data: Any, where: str | Path = "config") -> EnsembleConfig:
        """A config from parsed data; anything wrong is one :class:`InvalidConfigError`."""
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            from .textfiles import validation_problems

            raise InvalidConfigError(f"invalid config {where}: {validation_problems(err)}") from None

    WRITABLE: ClassVar[tuple[str, ...]] = (".json", ".yaml", ".yml", ".toml")

    @classmethod
    def check_writable(cls, path: str | Path) -> Path:
        """Refuse a path :meth:`write` could not write, before any work is done (a selection
        runs for minutes before it writes): a suffix it cannot read back, a directory, a folder
        that cannot be created or written."""
        path = Path(path)
        if path.suffix not in cls.WRITABLE:
            raise InvalidConfigError(f"cannot write a config as {path.name!r}: use one of {', '.join(cls.WRITABLE)}")
        if path.is_dir():
            raise InvalidConfigError(f"cannot write the config to {path}: it is a directory")
        parent = path.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
            raise InvalidConfigError(f"cannot write the config to {path}: {parent} is not a writable directory")
        return path

    def write(self, path: str | Path) -> Path:
        """Write as JSON, YAML or TOML (by suffix; each reads back with :meth:`read`)."""
        path = self.check_writable(path)
        data = self.model_dump(exclude_defaults=False)
        if path.suffix in (".yaml", ".yml"):
            import yaml

            text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
        elif path.suffix == ".toml":
            import tomli_w

            try:
                text = tomli_w.dumps(_without_none(data))  # TOML has no null: an unset field is left out
            except TypeError as err:
                raise InvalidConfigError(f"cannot write {path} as TOML: {err}") from None
        else:
            text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        except OSError as err:
            raise InvalidConfigError(f"cannot write the config to {path}: {err.strerror or err}") from None
        return path


def _without_none(value: Any) -> Any:
    """``value`` with every None dropped from its mappings (TOML cannot write null)."""
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value
