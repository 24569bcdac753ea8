"""The test tiers (tests/tiers.py): a fast-tier test cannot load a model, in process or in a
process it starts, and a test that uses a model fixture is slow."""

from __future__ import annotations

import subprocess
import sys

import llama_cpp
import pytest

from unite_llm.models import resolve_gguf

from .tiers import loads_model


def test_a_fast_tier_test_that_loads_weights_fails_naming_itself(request):
    with pytest.raises(RuntimeError, match="is in the fast tier but loads"):
        llama_cpp.Llama(model_path=str(resolve_gguf("smollm2-135m-instruct")), verbose=False)
    assert request.node.get_closest_marker("slow") is None


def test_a_vocabulary_alone_is_allowed_in_the_fast_tier():
    llm = llama_cpp.Llama(model_path=str(resolve_gguf("smollm2-135m-instruct")), vocab_only=True, verbose=False)
    assert llm.n_vocab() == 49152
    llm.close()


def test_a_process_a_fast_tier_test_starts_cannot_load_weights_either():
    code = f"import llama_cpp; llama_cpp.Llama(model_path={str(resolve_gguf('smollm2-135m-instruct'))!r}, verbose=False)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 70, proc.stderr
    assert "test_a_process_a_fast_tier_test_starts_cannot_load_weights_either is in the fast tier" in proc.stderr


def test_a_model_fixture_user_is_slow_without_a_mark_of_its_own(request, smol):
    """No explicit mark here: ``smol`` is a model fixture, and that puts this test in the slow tier."""
    assert loads_model(request.node)
    assert request.node.get_closest_marker("slow") is not None
    assert len(smol.vocab) == 49152
