"""A member served by llama-cpp-python's OpenAI-compatible server, started on loopback.

SmolLM2 is served by ``python -m llama_cpp.server``; Gemma runs in process.  Where no
number had to be bounded, the ensemble decodes exactly as the in-process pair does.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import httpx  # the `distributed` extra, which `make test` installs
import llama_cpp.server.app  # noqa: F401  (fail, do not skip, without the server extra)
import pytest

from unite_llm.engine import Ensemble
from unite_llm.errors import InvalidConfigError, ModelNotFoundError
from unite_llm.members import load_member
from unite_llm.models import resolve_gguf

from .tiers import model_fixture

PROMPT = "The capital of France is"
ALIAS = "smol-served"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@model_fixture(scope="module")
def server(tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "llama_cpp_server.log"
    cmd = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(resolve_gguf("smollm2-135m-instruct")),
        "--model_alias",
        ALIAS,
    ]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", "1024", "--n_threads", "1", "--logits_all", "true"]
    cmd += ["--verbose", "false"]
    with open(log, "wb") as sink:  # a file, not a pipe: a full pipe would stall the server
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 180
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited: {log.read_text(errors='replace')[-2000:]}")
            try:
                if httpx.get(f"{base}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("llama_cpp.server did not start in 180 s")
            time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _remote(server: str, **options):
    # The tokenizer on the spec, the rest as keyword options: both routes are used.
    return load_member(f"openai:{server}#{ALIAS}?tokenizer=smollm2-135m-instruct", name="smollm2-135m-instruct", **options)


def _compare(local, remote) -> int:
    """Assert equality up to the first approximated step; return how many steps were approximated."""
    approximated = [i for i, s in enumerate(remote.steps) if s.approximated]
    exact_until = approximated[0] if approximated else len(remote.steps)
    for a, b in zip(local.steps[:exact_until], remote.steps[:exact_until]):
        assert (a.chosen, a.union_size) == (b.chosen, b.union_size)
        assert a.member_probs == pytest.approx(b.member_probs, rel=1e-3, abs=1e-6)
    if not approximated:
        assert remote.text == local.text
    for s in remote.steps:
        assert all(entry.startswith("smollm2-135m-instruct: ") for entry in s.approximated)
    return len(approximated)


def test_remote_member_with_bounds_matches_where_nothing_was_bounded(server, smol, gemma):
    local = Ensemble([smol, gemma], parallel=False).generate(PROMPT, max_new_tokens=12)
    remote_smol = _remote(server, exact="bound")
    try:
        remote = Ensemble([remote_smol, gemma]).generate(PROMPT, max_new_tokens=12)
        n_approx = _compare(local, remote)
        print(f"\nbound mode: {n_approx}/12 steps approximated; text {remote.text!r} vs {local.text!r}")
        # The top-100 reach far: the greedy choice was never decided by a bound here.
        assert remote.text == local.text
        assert remote_smol.wire.calls == 12 and remote_smol.wire.received / 12 < 8000
    finally:
        remote_smol.close()


def test_logit_bias_facility_scores_candidates_exactly(server, smol, gemma):
    local = Ensemble([smol, gemma], parallel=False).generate(PROMPT, max_new_tokens=12)
    remote_smol = _remote(server)  # exact="logit_bias"
    try:
        remote = Ensemble([remote_smol, gemma]).generate(PROMPT, max_new_tokens=12)
        n_approx = _compare(local, remote)
        print(f"\nlogit_bias mode: {n_approx}/12 steps approximated; {remote_smol.wire.calls} requests")
        assert remote.text == local.text
        assert remote_smol.wire.calls > 12  # the union's outsiders were asked for one by one
        # Only END can still be bounded (an end-of-generation id ends a completion unscored).
        assert all(e.endswith(("<END>", "<top-k may miss END>")) for s in remote.steps for e in s.approximated)
    finally:
        remote_smol.close()


def test_logit_bias_logprob_equals_the_in_process_log_softmax(server, smol):
    from unite_llm.members.base import log_softmax

    ctx = smol.tokenize(PROMPT.encode(), add_bos=True)
    want = log_softmax(smol.next_logits(ctx))
    remote_smol = _remote(server, top_n=5)
    try:
        scores = remote_smol.next_logits(ctx)
        outside = [int(t) for t in want.argsort()[::-1][[50, 5000]]]  # far outside the returned top-5
        assert scores.at(outside) == pytest.approx(want[outside], abs=2e-3)
        assert scores.approximated == []
        bounded = _remote(server, top_n=5, exact="bound").next_logits(ctx)
        got = bounded.at(outside)
        assert all(g >= w for g, w in zip(got, want[outside]))  # a bound: never below the truth
        assert len(bounded.approximated) == 2
    finally:
        remote_smol.close()


def test_bad_remote_specs_are_user_errors(server):
    with pytest.raises(InvalidConfigError, match="needs tokenizer"):
        load_member(f"openai:{server}#{ALIAS}")
    with pytest.raises(InvalidConfigError, match="base_url"):
        load_member("openai:localhost", tokenizer="smollm2-135m-instruct")
    with pytest.raises(ModelNotFoundError, match="does not serve"):
        load_member(f"openai:{server}#other-model", tokenizer="smollm2-135m-instruct")
    with pytest.raises(InvalidConfigError, match="unknown openai member option"):
        load_member(f"openai:{server}#{ALIAS}?tokenizer=smollm2-135m-instruct&colour=blue")
    with pytest.raises(ModelNotFoundError, match="cannot reach"):
        load_member(f"openai:http://127.0.0.1:{_free_port()}/v1#x", tokenizer="smollm2-135m-instruct")
