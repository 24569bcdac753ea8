"""Build the self-contained folder that ``bench_gpu.py`` runs from on a machine without network.

    python bench/gpu/prepare.py                      # -> build/gpu-bench (prints its size)
    python bench/gpu/prepare.py --out /tmp/gpu-bench --models smollm2-135m-instruct --models gemma3-270m

The folder holds no weights.  Per embedded model, the architecture config and the tokenizer files,
both read here from the model's GGUF by transformers' ``gguf_file=`` loader (a few KB of config and
tokenizer settings in ``models/ALIAS/``; the 3 to 33 MB ``tokenizer.json`` gzipped in ``tokenizers/``,
the two Qwen2.5-Coder models' identical one stored once), plus the
repository's ``src/``, ``bench_gpu.py``, a one-command ``run.sh``, and the wheels of the pure-Python
dependencies the GPU image lacks (pydantic and its own dependencies: the image has torch,
transformers, accelerate, numpy, but no pydantic).  ``manifest.json`` records where each file came
from (commit, GGUF name and size) and the folder's total size, which must stay under 64 MiB: what
the borrowed GPU machine takes along.

Extraction takes about a minute (Gemma's 262k-token vocabulary is most of it); the extracted files
are cached under ``$UNITE_CACHE/gpu-bench`` keyed on each GGUF's size and modification time, and the
wheels under ``$UNITE_CACHE/gpu-bench/wheels``, so a second build is a copy.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "src"))

from unite_llm.models import cache_dir, resolve_gguf  # noqa: E402

sys.path.insert(0, str(HERE))
from bench_gpu import PROMPT  # noqa: E402

MODELS = ["qwen2.5-coder-1.5b-instruct", "qwen2.5-coder-0.5b-instruct", "gemma3-270m", "smollm2-135m-instruct"]
LIMIT_BYTES = 64 * 2**20
# Pure-Python or one-binary packages that `import unite_llm` needs and the GPU image may lack
# (/work/.library/device/KINDS.md lists what it has; pydantic is not there).  Versions: this
# machine's, so the code is run with what it is tested with here.
WHEELS = ["pydantic", "pydantic-core", "annotated-types", "typing-inspection", "typing-extensions"]
# The GPU image's Python (KINDS.md: Python 3.12.3 on x86_64 Linux).
TARGET = {"python_version": "3.12", "platform": "manylinux2014_x86_64", "abi": "cp312"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def extract(alias: str, cache: Path) -> tuple[Path, dict[str, object]]:
    """The config and tokenizer files of ``alias``'s GGUF in a cached folder, and where they came from."""
    gguf = resolve_gguf(alias)
    st = gguf.stat()
    key = f"{alias}-{st.st_size}-{st.st_mtime_ns}"
    out = cache / key
    info = {"gguf": gguf.name, "gguf_bytes": st.st_size}
    if (out / "config.json").is_file() and (out / "tokenizer.json").is_file():
        return out, info
    from transformers import AutoConfig, AutoTokenizer

    t0 = time.perf_counter()
    config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=cache))
    config.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    print(f"  {alias}: extracted from {gguf.name} in {time.perf_counter() - t0:.0f} s", flush=True)
    return out, info


def logit_stats(alias: str, folder: Path) -> dict[str, object]:
    """How spread the real model's next-token logits are on the bench's prompt (llama.cpp, the GGUF):
    the standard deviation over the vocabulary and the top-1 probability, medians over 6 positions.
    ``bench_gpu.py`` scales its random models' logits to the same spread (random initialisation
    gives a flat distribution, which no trained model has; the host-side top-k's cost depends on it)."""
    cached = folder / f"logits-{hashlib.sha256(PROMPT.encode()).hexdigest()[:12]}.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    try:
        import numpy as np

        from unite_llm.members.llama_cpp import LlamaCppMember
    except ImportError as err:
        return {"logit_std": None, "why": f"llama.cpp not importable: {err}"}
    member = LlamaCppMember(alias, n_ctx=512, n_threads=1)
    try:
        ids = member.tokenize(PROMPT.encode(), add_bos=True)
        stds, tops = [], []
        for cut in range(len(ids) - 20, len(ids) + 1, 4):
            logits = np.array(member.next_logits(ids[:cut]), dtype=np.float64)
            stds.append(float(logits.std()))
            p = np.exp(logits - logits.max())
            tops.append(float(p.max() / p.sum()))
    finally:
        member.close()
    stats = {"logit_std": float(np.median(stds)), "top1_prob": float(np.median(tops)), "positions": len(stds), "by": "llama.cpp"}
    cached.write_text(json.dumps(stats))
    return stats


def wheels(cache: Path) -> list[Path]:
    """This machine's versions of WHEELS, built for the GPU image's Python (downloaded once)."""
    cache.mkdir(parents=True, exist_ok=True)
    found = []
    for name in WHEELS:
        version = importlib.metadata.version(name)
        stem = f"{name.replace('-', '_')}-{version}-"
        have = [p for p in cache.glob("*.whl") if p.name.lower().startswith(stem.lower())]
        if not have:
            cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(cache)]
            cmd += ["--python-version", TARGET["python_version"], "--platform", TARGET["platform"], "--abi", TARGET["abi"]]
            cmd += ["--implementation", "cp", f"{name}=={version}"]
            subprocess.run(cmd, check=True)
            have = [p for p in cache.glob("*.whl") if p.name.lower().startswith(stem.lower())]
        if not have:
            raise SystemExit(f"pip download gave no wheel for {name}=={version}")
        found.append(sorted(have)[-1])
    return found


def git_commit() -> dict[str, object]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain", "--", "src", "bench/gpu"))}


RUN_SH = """#!/usr/bin/env bash
# One command on any CUDA machine with torch and transformers (no network needed):
#   bash run.sh --out gpu.json            (add --device cpu --tiny for the CPU check)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${PYTHON:-python3}"
args=("$@")
[[ " $* " == *" --device "* ]] || args=(--device cuda "${args[@]}")
exec "$PY" "$here/bench_gpu.py" --folder "$here" "${args[@]}"
"""


def build(out: Path, models: list[str], *, with_wheels: bool = True) -> dict[str, object]:
    cache = cache_dir() / "gpu-bench"
    cache.mkdir(parents=True, exist_ok=True)
    if out.exists():
        shutil.rmtree(out)
    (out / "models").mkdir(parents=True)
    (out / "tokenizers").mkdir()
    manifest: dict[str, object] = {
        "schema": "unite-gpu-bench-folder/1",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    manifest |= git_commit()
    entries: dict[str, object] = {}
    by_hash: dict[str, str] = {}
    for alias in models:
        src, info = extract(alias, cache)
        (out / "models" / alias).mkdir()
        shutil.copy2(src / "config.json", out / "models" / alias / "config.json")
        for f in TOKENIZER_FILES[1:]:  # the small per-model files (the chat templates differ)
            if (src / f).is_file():
                shutil.copy2(src / f, out / "models" / alias / f)
        digest = sha256(src / "tokenizer.json")
        if digest not in by_hash:  # the two Qwen2.5-Coder models share one tokenizer.json: stored once
            by_hash[digest] = alias
            (out / "tokenizers" / alias).mkdir()
            with (
                open(src / "tokenizer.json", "rb") as fin,
                gzip.GzipFile(out / "tokenizers" / alias / "tokenizer.json.gz", "wb", 9, mtime=0) as fout,
            ):
                shutil.copyfileobj(fin, fout)
        config = json.loads((src / "config.json").read_text())
        entries[alias] = (
            info
            | logit_stats(alias, src)
            | {
                "config": f"models/{alias}/config.json",
                "tokenizer_json": f"tokenizers/{by_hash[digest]}/tokenizer.json.gz",
                "tokenizer_sha256": digest,
                "model_type": config.get("model_type"),
                "vocab_size": config.get("vocab_size"),
                "layers": config.get("num_hidden_layers"),
                "hidden_size": config.get("hidden_size"),
                "tie_word_embeddings": config.get("tie_word_embeddings"),
            }
        )
    manifest["models"] = entries
    shutil.copytree(ROOT / "src" / "unite_llm", out / "src" / "unite_llm", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy2(HERE / "bench_gpu.py", out / "bench_gpu.py")
    (out / "run.sh").write_text(RUN_SH)
    (out / "run.sh").chmod(0o755)
    if with_wheels:
        (out / "wheels").mkdir()
        for whl in wheels(cache / "wheels"):
            shutil.copy2(whl, out / "wheels" / whl.name)
    manifest["wheels"] = sorted(p.name for p in (out / "wheels").glob("*.whl")) if with_wheels else []
    others = folder_bytes(out)
    manifest["total_bytes"] = others
    for _ in range(3):  # the total counts manifest.json itself
        text = json.dumps(manifest, indent=2) + "\n"
        manifest["total_bytes"] = others + len(text.encode())
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    manifest["total_bytes"] = folder_bytes(out)
    return manifest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "gpu-bench", help="folder to (re)create")
    ap.add_argument("--models", action="append", help=f"aliases to include (default: {', '.join(MODELS)})")
    ap.add_argument("--no-wheels", action="store_true", help="leave the wheels out (a machine that has pydantic)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    manifest = build(args.out, args.models or MODELS, with_wheels=not args.no_wheels)
    size = int(str(manifest["total_bytes"]))
    limit = LIMIT_BYTES // 2**20
    print(f"{args.out}: {size:,} bytes ({size / 2**20:.1f} MiB of the {limit} MiB limit), {time.perf_counter() - t0:.0f} s")
    if size > LIMIT_BYTES:
        raise SystemExit(f"the folder is {size / 2**20:.1f} MiB: over the {LIMIT_BYTES // 2**20} MiB limit")


if __name__ == "__main__":
    main()
