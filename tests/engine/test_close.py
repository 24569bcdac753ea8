"""A closed Ensemble, or a member its ensemble closed, raises ``RuntimeError`` (issue 28 item 1).

Before, any call after ``close()`` read llama.cpp memory that was already freed: SIGSEGV
(``generate``) or SIGABRT (``stream``: ``std::out_of_range`` in ``llama_vocab::get_token_data``).
Each case runs in a child process, so a crash fails the test instead of killing pytest.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from tests.fakes import FakeMember
from unite_llm.engine import Ensemble

LOAD = 'from unite_llm.engine import Ensemble\ne = Ensemble.load(["smollm2-135m-instruct"], n_threads=1, n_ctx=256)\n'

CASES = {
    "generate after close": "e.close()\ne.generate('Hi', max_new_tokens=3)",
    "stream after close": "e.close()\nlist(e.stream('Hi', max_new_tokens=3))",
    "generate_batch after close": "e.close()\ne.generate_batch(['Hi', 'Yo'], max_new_tokens=2)",
    "exclusive after close": "e.close()\nwith e.exclusive():\n    pass",
    "after a with block": "with e:\n    e.generate('Hi', max_new_tokens=1)\ne.generate('Hi', max_new_tokens=1)",
    "member after close": "m = e.members[0]\ne.close()\nm.tokenize(b'Hi')",
    "member next_logits after close": "m = e.members[0]\ne.close()\nm.next_logits([1, 2])",
    "member score after close": "m = e.members[0]\ne.close()\nm.score([1, 2, 3])",
}


@pytest.mark.slow  # loads SmolLM2 in a subprocess
@pytest.mark.parametrize("case", sorted(CASES))
def test_use_after_close_raises_runtime_error(case: str) -> None:
    body = textwrap.indent(CASES[case], "    ")
    code = LOAD + f"try:\n{body}\nexcept RuntimeError as err:\n    print('RuntimeError:', err)\n"
    code += "e.close()\n"  # closing again is harmless
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"exit {run.returncode}: {run.stderr[-2000:]}"
    assert "RuntimeError:" in run.stdout and "closed" in run.stdout, run.stdout + run.stderr[-2000:]


def test_closed_ensemble_of_fakes_refuses_every_entry_point() -> None:
    ens = Ensemble([FakeMember("left"), FakeMember("right")])
    ens.generate("the", max_new_tokens=1)
    ens.close()
    assert ens.closed
    for call in (
        lambda: ens.generate("the", max_new_tokens=1),
        lambda: list(ens.stream("the", max_new_tokens=1)),
        lambda: ens.generate_batch(["a", "b"], max_new_tokens=1),
        lambda: ens.generate(["a", "b"], max_new_tokens=1),
        lambda: ens.exclusive().__enter__(),
        lambda: ens.__enter__(),
    ):
        with pytest.raises(RuntimeError, match="closed"):
            call()
    ens.close()  # twice: harmless
