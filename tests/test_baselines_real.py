"""The baselines on the real default pair (SmolLM2-135M byte-level BPE + Gemma-3-270M
SentencePiece), a few tokens each, checked against independent computations."""

from __future__ import annotations

import os
import subprocess
import sys

import llama_cpp
import numpy as np
import pytest

from unite_llm.engine import Ensemble
from unite_llm.members.base import log_softmax, token_logprobs
from unite_llm.members.llama_cpp import PREFILL_CHUNK
from unite_llm.methods.base import END
from unite_llm.methods.deepen import GIB, DeePEn, OutOfMemoryError, current_rss
from unite_llm.methods.gac import GaC
from unite_llm.methods.packllm import PackLLM, packllm_weights
from unite_llm.prompts import start_track
from unite_llm.rank import Rank

PROMPT = "The capital of France is"


def test_score_matches_a_fresh_prefill_per_position(real_member) -> None:
    """The batched scorer gives what a prefill of each prefix gives as next-token log-probability.

    (Compared with prefills, not with one-token decode steps: llama.cpp's batched and
    one-token kernels round quantized weights differently, by up to ~0.3 nats here.)
    """
    tokens = real_member.tokenize(b"The capital of France is Paris. It is on the Seine.", add_bos=True)
    batched = real_member.score(tokens, 2)
    fresh = []
    llm = real_member.llm
    for t in range(2, len(tokens)):
        llm.reset()  # the whole prefix in one batch, logits read from its end (batched kernels)
        llm.eval(tokens[:t])
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))
        fresh.append(log_softmax(logits)[tokens[t]])
    real_member._context = []
    diff = np.abs(batched - np.array(fresh))
    assert batched.shape == diff.shape == (len(tokens) - 2,)
    assert np.mean(diff < 1e-4) >= 0.5 and np.mean(diff) < 0.03
    assert np.all(batched < 0)
    real_member.score(tokens, 2)
    n = real_member.n_evaluated
    real_member.start_sequence()
    real_member.next_logits(tokens)  # a generation reuses the whole aligned chunks scored, evaluates the rest
    assert real_member.n_evaluated - n == len(tokens) - (len(tokens) - 1) // PREFILL_CHUNK * PREFILL_CHUNK


def test_score_reuses_a_shared_prefix_scored_before(real_member) -> None:
    """Two prompts with one few-shot block: the second is scored from where they part."""
    shots = b"Q: What is the capital of Italy?\nA: Rome\n\nQ: What is the capital of Spain?\nA: Madrid\n\n"
    first = real_member.tokenize(shots + b"Q: What is the capital of Peru?\nA:", add_bos=True)
    second = real_member.tokenize(shots + b"Q: What is the capital of Chile?\nA:", add_bos=True)
    shared = next(i for i, (a, b) in enumerate(zip(first, second)) if a != b)
    real_member.reset()
    real_member.score(first, 1)
    n = real_member.n_evaluated
    warm = real_member.score(second, 1)
    assert real_member.n_evaluated - n == len(second) - shared  # from the last shared position on
    real_member.reset()
    cold = real_member.score(second, 1)
    assert not np.isnan(warm).any() and warm.shape == cold.shape
    assert np.mean(np.abs(warm - cold)) < 0.03  # batched kernels round by chunk; same values otherwise
    real_member.reset()


def test_gac_real_step_is_the_full_union_argmax(smol, gemma) -> None:
    ens = Ensemble([smol, gemma], method=GaC(top=8))
    out = ens.generate(PROMPT, max_new_tokens=4)
    # The union, counted independently: distinct text pieces of both vocabularies, plus END.
    pieces = {p for v in (smol.vocab, gemma.vocab) for i, p in enumerate(v.pieces) if v.emittable[i]}
    assert all(s.aligned == len(pieces) + 1 for s in out.steps)
    assert out.prompt_tokens and out.timing.prepare_s > 0
    # First step recomputed with dicts: average of both members' full distributions over bytes.
    tracks = [start_track(m, PROMPT, chat=False) for m in (smol, gemma)]
    union: dict[object, float] = {}
    for member, track in zip((smol, gemma), tracks):
        p = np.exp(log_softmax(member.next_logits(track.tokens)))
        mass: dict[object, float] = {}
        for tid, piece in enumerate(member.vocab.pieces):
            key = END if tid in member.vocab.eog_ids else piece if piece else None
            if key is not None:
                mass[key] = mass.get(key, 0.0) + p[tid]
        total = sum(mass.values())
        for key, v in mass.items():
            union[key] = union.get(key, 0.0) + 0.5 * v / total
    best = max(union, key=union.get)
    assert out.steps[0].chosen == best.decode("utf-8", "backslashreplace")
    assert out.steps[0].prob == pytest.approx(union[best], rel=1e-6)


def test_packllm_real_weights_follow_prompt_perplexity(smol, gemma) -> None:
    method = PackLLM(tau=1.0)
    ens = Ensemble([smol, gemma], method=method)
    out = ens.generate(PROMPT, max_new_tokens=3)
    assert out.steps and method.last_weights is not None
    # Log-perplexities recomputed with the one-position-at-a-time fallback.
    expect = []
    for member in (smol, gemma):
        tokens = start_track(member, PROMPT, chat=False).tokens
        lp = [log_softmax(member.next_logits(tokens[:t]))[tokens[t]] for t in range(1, len(tokens))]
        expect.append(-float(np.mean(lp)))
    assert method.last_log_ppl == pytest.approx(expect, abs=0.05)
    assert method.last_weights == pytest.approx(packllm_weights(method.last_log_ppl, 1.0))
    assert np.argmax(method.last_weights) == np.argmin(method.last_log_ppl)


def test_rank_real_returns_the_best_members_own_answer(smol, gemma) -> None:
    method = Rank()
    ens = Ensemble([smol, gemma], method=method)
    out = ens.generate(PROMPT, max_new_tokens=6)
    ranking = method.last_ranking
    assert ranking is not None and ranking.ranker == "loglik"
    solo = [Ensemble([m]).generate(PROMPT, max_new_tokens=6).text for m in (smol, gemma)]
    assert list(ranking.answers.values()) == solo  # each member answered on its own
    assert out.text == solo[ranking.best]
    assert ranking.best == int(np.argmax(ranking.totals))
    # member 0's score of answer 1, recomputed directly
    tokens0 = start_track(smol, PROMPT, chat=False).tokens
    full = start_track(smol, PROMPT, chat=False)
    full.append(solo[1].encode())
    start = next(i for i, (a, b) in enumerate(zip([*tokens0, -1], full.tokens)) if a != b)
    direct = float(np.mean(token_logprobs(smol, full.tokens, start)))
    assert ranking.scores[0][1] == pytest.approx(direct, abs=1e-6)


def test_deepen_full_fails_measured_before_allocating(smol, gemma) -> None:
    before = current_rss()
    ens = Ensemble([smol, gemma], method=DeePEn(memory_gib=8))
    with pytest.raises(OutOfMemoryError, match=r"46,145 anchors .* = 53\.5 GiB.*deepen-fit"):
        ens.generate(PROMPT, max_new_tokens=2)
    assert current_rss() - before < 64 << 20  # nothing large was allocated


def test_deepen_fit_real_runs_labelled(smol, gemma) -> None:
    budget = current_rss() / GIB + 2.6  # room for the embeddings and a few hundred anchors
    method = DeePEn(fit=True, memory_gib=budget)
    ens = Ensemble([smol, gemma], method=method)
    out = ens.generate(PROMPT, max_new_tokens=3)
    assert method.name.startswith("deepen-top")
    n = int(method.name.removeprefix("deepen-top"))
    assert 0 < n < 46145 and method.space is not None and len(method.space.anchors) == n
    assert method.space.nbytes == (len(smol.vocab) + len(gemma.vocab)) * n * 4
    assert current_rss() < budget * GIB + (512 << 20)
    assert len(out.steps) == 3 and all(s.aligned == len(smol.vocab) + len(gemma.vocab) for s in out.steps)
    # the output is spelled with the target's (first member's) tokens
    assert all(smol.vocab.ids_of(s.chosen.encode()) for s in out.steps)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    exe = os.path.join(os.path.dirname(sys.executable), "unite")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_cli_methods() -> None:
    pair = ("-m", "smollm2-135m-instruct", "-m", "gemma3-270m")  # 258,775 = their two vocabularies
    gac = _cli("generate", *pair, "--method", "gac", "-n", "3", "--n-ctx", "512", "--json", PROMPT)
    assert gac.returncode == 0, gac.stderr
    assert '"aligned": 258775' in gac.stdout and '"method": "gac"' in gac.stdout
    rank = _cli("generate", *pair, "--method", "rank", "-n", "3", "--n-ctx", "512", PROMPT)
    assert rank.returncode == 0 and rank.stdout.strip(), rank.stderr
    full = _cli("generate", *pair, "--method", "deepen", "-n", "2", "--n-ctx", "512", PROMPT)
    assert full.returncode == 2 and "out of memory" in full.stderr and "Traceback" not in full.stderr
