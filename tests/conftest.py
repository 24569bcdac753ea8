"""Shared fixtures: the real models, loaded once per test session.

Nothing here is mocked: the tests run llama.cpp on SmolLM2-135M-Instruct (byte-level
BPE, 49,152 tokens), Gemma-3-270M (SentencePiece, 262,144 tokens) and Qwen2.5-Coder
0.5B/1.5B-Instruct (byte-level BPE, 151,936 tokens), all from PyPI.
One llama.cpp thread each: on a busy 2-core machine two spinning threads per model were
measured many times slower than one (~1 s/token against 45 ms for SmolLM2).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from unite_llm.members.llama_cpp import LlamaCppMember

from .tiers import forbid_models, model_fixture, set_tiers

__all__ = ["forbid_models"]  # the fast tier's guard, autouse for every test

ROOT = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("UNITE_DATASETS", ROOT.parent / "shared" / "datasets"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test that uses a model fixture is slow (:mod:`tests.tiers`); ``pytest -m "not slow"``
    runs the rest, the fast tier."""
    set_tiers(items)


def _member(alias: str):
    m = LlamaCppMember(alias, n_ctx=2048, n_threads=1)
    yield m
    m.close()


@model_fixture(scope="session")
def smol() -> LlamaCppMember:
    yield from _member("smollm2-135m-instruct")


@model_fixture(scope="session")
def gemma() -> LlamaCppMember:
    yield from _member("gemma3-270m")


@model_fixture(scope="session")
def qwen05() -> LlamaCppMember:
    yield from _member("qwen2.5-coder-0.5b-instruct")


@model_fixture(scope="session", params=["smol", "gemma"])
def real_member(request) -> LlamaCppMember:
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="session")
def datasets() -> Path:
    if not DATASETS.is_dir():
        raise FileNotFoundError(f"benchmark data not found at {DATASETS} (set UNITE_DATASETS)")
    return DATASETS


SHOTS = (
    "Question: what is the capital of france?\nAnswer: Paris\n\n"
    "Question: who wrote romeo and juliet?\nAnswer: William Shakespeare\n\n"
    "Question: how many legs does a spider have?\nAnswer: eight\n\n"
    "Question: what is the largest planet in the solar system?\nAnswer: Jupiter\n\n"
    "Question: who painted the mona lisa?\nAnswer: Leonardo da Vinci\n\n"
)


@pytest.fixture(scope="session")
def qa_prompt():
    """``qa_prompt(question, shots=False)``: a QA prompt, behind a shared 5-shot block when
    ``shots`` (prompts that share a prefix longer than a few aligned prefill chunks)."""

    def make(question: str, shots: bool = False) -> str:
        return f"{SHOTS if shots else ''}Question: {question}\nAnswer:"

    return make


@pytest.fixture(scope="session")
def nq_questions(datasets: Path) -> list[str]:
    """The first 10 NQ-open questions, with a question mark."""
    with (datasets / "nq_open" / "NQ-open.dev.jsonl").open(encoding="utf-8") as f:
        return [json.loads(line)["question"] + "?" for _, line in zip(range(10), f)]
