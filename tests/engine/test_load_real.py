"""``Ensemble.load`` on the real SmolLM2 (issue 28 item 13): one string is one member, and one
GGUF given once by alias and once by path is refused like one alias twice (slow tier)."""

from __future__ import annotations

import pytest

from unite_llm.engine import Ensemble
from unite_llm.errors import InvalidConfigError
from unite_llm.models import resolve_gguf

ALIAS = "smollm2-135m-instruct"


@pytest.mark.slow  # loads a model itself
def test_a_plain_string_is_one_member() -> None:
    with Ensemble.load(ALIAS, n_threads=1, n_ctx=256) as ens:
        assert ens.names == [ALIAS]


@pytest.mark.slow  # loads a model itself
def test_one_file_by_alias_and_by_path_is_refused() -> None:
    path = str(resolve_gguf(ALIAS))
    with pytest.raises(InvalidConfigError, match="same model file"):
        Ensemble.load([ALIAS, path], n_threads=1, n_ctx=256)
