"""Prompt log-probabilities from ``/v1/completions`` (``echo``), the tokenizer routes, and
lm-evaluation-harness's ``local-completions`` running a log-likelihood task against the server.

On the real models: a one-member server echoes exactly the member's own per-token
log-probabilities (llama.cpp's, through the member's scorer) and its own top alternatives;
a two-member one (SmolLM2 + Gemma: byte-level BPE and SentencePiece) echoes the mixture's
per-token values, whose sum over the prompt is the mixture of the members' whole-prompt
log-probabilities; and lm-eval's ``local-completions`` with ``tokenizer_backend=remote``
(the server's ``/tokenize``) scores ``tests/data/lm_eval``'s multiple-choice task with the
in-process model's log-likelihoods (one member) and finishes for the ensemble.
"""

from __future__ import annotations

import math
from pathlib import Path

import httpx
import numpy as np
import pytest
from tests.test_lm_eval_model import Reference

from unite_llm.engine import Ensemble
from unite_llm.loglik import context_track, member_loglik, mixture
from unite_llm.members.base import log_softmax, token_logprobs

TASKS = Path(__file__).resolve().parents[1] / "data" / "lm_eval"
PROMPTS = [
    "The capital of France is Paris",
    "Question: Who wrote Hamlet?\nAnswer: William Shakespeare",
    "Café au lait, 你好, and 🙂 at the end",
]


def llama_reference(smol, tokens: list[int]) -> list[np.ndarray]:
    """llama.cpp by itself (SmolLM2, logits at every position, batched as the member's scorer
    evaluates a cold sequence): the log-softmax after each token."""
    ref = Reference("smollm2-135m-instruct", smol)
    try:
        ref.llm.eval(tokens)
        return [log_softmax(np.asarray(row, dtype=np.float64)) for row in ref.llm.scores[: len(tokens)]]
    finally:
        ref.close()


@pytest.fixture(scope="module")
def solo(smol, serve_ensemble):
    with serve_ensemble(Ensemble([smol], prefix_cache=False), "smol-solo") as srv:
        yield srv


def echo(srv, prompt, logprobs=1, max_tokens=0) -> dict:
    body = {"model": srv.model, "prompt": prompt, "echo": True, "logprobs": logprobs, "max_tokens": max_tokens}
    body["temperature"] = 0
    resp = httpx.post(f"{srv.v1}/completions", json=body, timeout=300)
    assert resp.status_code == 200, resp.text
    return resp.json()["choices"][0]


def tokenize(srv, text: str, add_special_tokens: bool = False) -> list[int]:
    resp = httpx.post(f"{srv.url}/tokenize", json={"prompt": text, "add_special_tokens": add_special_tokens}, timeout=60)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["count"] == len(body["tokens"])
    return body["tokens"]


@pytest.mark.parametrize("text", PROMPTS)
def test_one_member_echo_is_the_members_own(solo, smol, text):
    ids = tokenize(solo, text)
    assert ids == smol.tokenize(text.encode(), add_bos=False, special=True)
    choice = echo(solo, ids, logprobs=3)
    lp = choice["logprobs"]
    assert choice["text"] == text
    assert "".join(lp["tokens"]).encode() == text.encode() or len(lp["tokens"]) == len(ids)
    assert len(lp["token_logprobs"]) == len(ids) and lp["token_logprobs"][0] is None
    # Conditioned as the ensemble prompts SmolLM2: on BOS if its tokenizer adds one (it does not).
    head = smol.tokenize(text.encode(), add_bos=True, special=True)[: -len(ids)]
    dists = llama_reference(smol, [*head, *ids])[len(head) : len(head) + len(ids) - 1]  # the rows that predict ids[1:]
    want = [d[i] for d, i in zip(dists, ids[1:])]
    np.testing.assert_allclose(lp["token_logprobs"][1:], want, atol=1e-4)
    for t, dist in enumerate(dists, start=1):
        top = lp["top_logprobs"][t]
        best = np.sort(dist)[::-1][:3]
        assert len(top) >= 3
        np.testing.assert_allclose(sorted(top.values(), reverse=True)[:3], best, atol=1e-3)
        assert lp["top_logprobs"][t][lp["tokens"][t]] == pytest.approx(lp["token_logprobs"][t], abs=1e-9)
    assert lp["text_offset"][0] == 0 and lp["text_offset"] == sorted(lp["text_offset"])


def test_echo_continuation_sum_is_the_in_process_loglik(solo, smol):
    context, continuation = "Question: Who wrote Hamlet?\nAnswer:", " William Shakespeare"
    ctx = tokenize(solo, context)
    whole = tokenize(solo, context + continuation)
    assert whole[: len(ctx)] == ctx
    lp = echo(solo, whole, max_tokens=1)["logprobs"]["token_logprobs"]  # lm-eval's request: one more token
    assert len(lp) == len(whole) + 1
    with solo.ensemble.exclusive():
        want = member_loglik(smol, context, continuation).logprob
    # lm-eval's ``parse_logprobs``: the continuation's tokens, less the one generated.
    assert sum(lp[len(ctx) : -1]) == pytest.approx(want, abs=1e-4)


def test_text_and_token_prompts_echo_alike(solo):
    text = PROMPTS[1]
    by_text = echo(solo, text, max_tokens=3)
    by_ids = echo(solo, tokenize(solo, text, add_special_tokens=True), max_tokens=3)
    assert by_text["text"] == by_ids["text"] and by_text["text"].startswith(text)
    assert by_text["logprobs"]["tokens"] == by_ids["logprobs"]["tokens"]
    body = {"model": solo.model, "prompt": text, "max_tokens": 3, "temperature": 0}
    plain = httpx.post(f"{solo.v1}/completions", json=body, timeout=120)
    assert by_text["text"] == text + plain.json()["choices"][0]["text"]


def test_two_member_echo_is_the_mixture(server, smol, gemma_chat):
    ens = server.ensemble
    text = PROMPTS[2]
    ids = tokenize(server, text)
    lp = echo(server, ids)["logprobs"]
    vals = lp["token_logprobs"]
    assert vals[0] is None and all(v <= 1e-9 and math.isfinite(v) for v in vals[1:])
    # Independently: each member's log-probability of its tokens that end after the first reference token.
    first_end = len(smol.vocab.pieces[ids[0]])
    with server.ensemble.exclusive():
        head = smol.tokenize(text.encode(), add_bos=True, special=True)[: -len(ids)]
        smol_lp = float(token_logprobs(smol, [*head, *ids], len(head) + 1).sum())
        toks = list(context_track(gemma_chat, text.encode()).tokens)
        g = token_logprobs(gemma_chat, toks, 1)
    ends = np.cumsum([len(gemma_chat.vocab.pieces[t]) for t in toks])[1:]
    gemma_lp = float(g[ends > first_end].sum())
    assert sum(vals[1:]) == pytest.approx(mixture([smol_lp, gemma_lp], ens.weights), abs=1e-4)
    # Prompt positions of an ensemble carry the echoed token alone (no alternatives exist there).
    assert all(list(top) == [tok] for top, tok in zip(lp["top_logprobs"][1:], lp["tokens"][1:]) if tok)


def test_tokenizer_routes(server, smol):
    info = httpx.get(f"{server.url}/tokenizer_info", timeout=30).json()
    assert info["member"] == smol.name and info["vocab_size"] == len(smol.vocab)
    ids = tokenize(server, "Hello, world")
    back = httpx.post(f"{server.url}/detokenize", json={"tokens": ids}, timeout=30).json()["prompt"]
    assert back == "Hello, world"
    if info["eos_token"]:
        assert len(tokenize(server, info["eos_token"])) == 1  # lm-eval reads eos_token_id this way
    bad = httpx.post(f"{server.url}/detokenize", json={"tokens": [len(smol.vocab)]}, timeout=30)
    assert bad.status_code == 400 and "out of range" in bad.json()["error"]["message"]


def run_local_completions(srv) -> dict:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    args = f"model={srv.model},base_url={srv.v1}/completions,tokenizer_backend=remote,num_concurrent=1,max_retries=1,timeout=300"
    return simple_evaluate(
        model="local-completions",
        model_args=args,
        tasks=["unite_mc"],
        task_manager=TaskManager(include_path=str(TASKS)),
        limit=4,
        log_samples=True,
        bootstrap_iters=0,
    )


def test_lm_eval_local_completions_runs_a_loglikelihood_task(solo, server, smol, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    results = run_local_completions(solo)
    samples = results["samples"]["unite_mc"]
    assert len(samples) == 4
    for s in samples:
        args = s["arguments"]
        pairs = [(a["arg_0"], a["arg_1"]) for a in args.values()] if isinstance(args, dict) else [(a[0], a[1]) for a in args]
        with solo.ensemble.exclusive():
            want = [member_loglik(smol, c, x).logprob for c, x in pairs]
        got = [float(r[0][0]) for r in s["resps"]]
        np.testing.assert_allclose(got, want, atol=1e-4)
        assert s["acc"] == float(int(np.argmax(want)) == int(s["target"]))
    # The ensemble server runs the same task (its values: the mixture's, see test_two_member_echo_is_the_mixture).
    ens = run_local_completions(server)
    assert 0.0 <= ens["results"]["unite_mc"]["acc,none"] <= 1.0
    assert all(math.isfinite(float(r[0][0])) for s in ens["samples"]["unite_mc"] for r in s["resps"])
