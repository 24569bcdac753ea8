"""Bad input found by an adversarial pass (issue 15): each case is one clear, early error.

The CLI cases run ``unite`` in a real subprocess as a user would; "early" is checked by
pairing the bad setting with a model file that would fail to load: the setting's error
must come first, so it was found before any model was touched.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from unite_llm.engine import Ensemble
from unite_llm.errors import InvalidConfigError, ModelFileError, ModelNotFoundError
from unite_llm.members.llama_cpp import LlamaCppMember
from unite_llm.models import resolve_gguf
from unite_llm.sampling import GenerationConfig

UNITE = [sys.executable, "-m", "unite_llm.cli"]


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.run([*UNITE, *args], capture_output=True, timeout=timeout, env=env, text=True)


def assert_user_error(proc: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr and 'File "' not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


@pytest.fixture(scope="module")
def bad_ggufs(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("gguf")
    text = folder / "text.gguf"
    text.write_text("this is not a model\n")
    empty = folder / "empty.gguf"
    empty.write_bytes(b"")
    truncated = folder / "truncated.gguf"
    with resolve_gguf("smollm2-135m-instruct").open("rb") as f:
        truncated.write_bytes(f.read(2_000_000))  # a real GGUF header, cut off in the tensor data
    return {"text": text, "empty": empty, "truncated": truncated}


# -- seeds ------------------------------------------------------------------------------------


@pytest.mark.slow  # loads a model itself
def test_seed_minus_one_runs_on_the_cli():
    proc = run("generate", "--seed", "-1", "--temperature", "0.8", "-n", "3", "--n-ctx", "256", "Hello")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr


def test_seed_rule_is_llama_cpp_s():
    """-1 is "any seed" (as no seed); other negatives are their unsigned 32-bit value."""
    assert GenerationConfig(seed=-1).seed is None
    assert GenerationConfig(seed=-2).seed == 2**32 - 2
    assert GenerationConfig(seed=-(2**32)).seed == 0
    assert GenerationConfig(seed=np.int64(7)).seed == 7
    assert GenerationConfig(seed=2**40).seed == 2**40  # large seeds pass through unchanged
    for bad in (1.5, "3", True):
        with pytest.raises(InvalidConfigError, match="seed must be an integer"):
            GenerationConfig(seed=bad)


def test_negative_seed_samples_like_its_unsigned_value(smol, gemma):
    ens = Ensemble([smol, gemma], prefix_cache=False)
    texts = {
        seed: ens.generate("Once upon a time", max_new_tokens=6, temperature=1.0, seed=seed).text for seed in (-2, 2**32 - 2)
    }
    assert texts[-2] == texts[2**32 - 2]
    ens.generate("Once upon a time", max_new_tokens=2, temperature=1.0, seed=-1)  # runs (a fresh random seed)


# -- sampling settings before the models load -------------------------------------------------------


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-0.5"])
def test_bad_temperature_fails_before_models_load(value, bad_ggufs):
    # The model file is unloadable: the temperature error coming first proves nothing was loaded.
    proc = run("generate", "-m", str(bad_ggufs["text"]), "--temperature", value, "hi")
    assert_user_error(proc, 2, "temperature must be a finite number >= 0")


def test_generation_config_refuses_nan_and_inf():
    for t in (float("nan"), float("inf"), -1.0):
        with pytest.raises(InvalidConfigError, match="temperature"):
            GenerationConfig(temperature=t)
    with pytest.raises(InvalidConfigError, match="top_p"):
        GenerationConfig(top_p=float("nan"))


# -- context size -----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["-1", "-4096", "2147483648"])
def test_negative_n_ctx_fails_before_models_load(value, tmp_path):
    message = f"n_ctx must be an integer >= 0 (0: the model's trained context), got {value}"
    proc = run("generate", "-m", str(tmp_path / "missing.gguf"), "--n-ctx", value, "hi")
    assert_user_error(proc, 2, message)
    proc = run("eval", "--task", "nq", "-m", str(tmp_path / "missing.gguf"), "--n-ctx", value, "--out", str(tmp_path / "o"))
    assert_user_error(proc, 2, message)


@pytest.mark.slow  # loads a model itself
def test_n_ctx_zero_is_the_trained_context():
    m = LlamaCppMember("smollm2-135m-instruct", n_ctx=0, n_threads=1)
    try:
        assert m.n_ctx == m.llm._model.n_ctx_train() == 8192
        assert m.next_logits(m.tokenize(b"Hello")).shape == (len(m.vocab),)
    finally:
        m.close()


def test_bad_threads_are_refused():
    with pytest.raises(InvalidConfigError, match="n_threads"):
        LlamaCppMember("smollm2-135m-instruct", n_threads=-2)


# -- model files ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("text", "is not a GGUF model file (it starts with b'this', not b'GGUF')"),
        ("empty", "is empty (0 bytes), not a GGUF model"),
        ("truncated", "(2,000,000 bytes): truncated or damaged"),
    ],
)
@pytest.mark.slow  # loads a model itself
def test_a_file_that_is_not_a_loadable_gguf_is_named(kind, message, bad_ggufs):
    path = bad_ggufs[kind]
    proc = run("generate", "-m", str(path), "hi")
    assert_user_error(proc, 3, str(path), message)
    with pytest.raises(ModelFileError, match=r"GGUF|truncated") as info:
        LlamaCppMember(str(path))
    assert isinstance(info.value, ModelNotFoundError) and str(path) in str(info.value)
