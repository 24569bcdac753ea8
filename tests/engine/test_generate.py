"""The decode loop on the real default pair: single-member exactness, KV reuse, stop
strings, chat mode, primary mode, sampling reproducibility and bad input."""

from __future__ import annotations

import llama_cpp
import numpy as np
import pytest

from unite_llm import Ensemble, GenerationConfig
from unite_llm.errors import ContextLengthError, InvalidConfigError, InvalidInputError
from unite_llm.members.base import common_prefix
from unite_llm.members.llama_cpp import PREFILL_CHUNK, LlamaCppMember

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a village in China called 你好",
    "List: 1, 2, 3,",
]


def own_greedy(member: LlamaCppMember, prompt: str, n: int) -> list[int]:
    """The model decoding by itself with llama-cpp-python: argmax, append, repeat.

    The last prompt token is evaluated on its own, as every later token is (and as
    llama-cpp-python's own ``generate`` does once the prompt is cached): llama.cpp's
    batched and single-token kernels round differently, so logits read from the end of a
    batch differ in the last bits, which can flip a near-tie.
    """
    llm = member.llm
    ids = llm.tokenize(prompt.encode(), add_bos=True, special=True)
    llm.reset()
    member._context = []
    llm.eval(ids[:-1])
    llm.eval(ids[-1:])
    out: list[int] = []
    for _ in range(n):
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))
        tok = int(np.argmax(logits))
        if tok in member.vocab.eog_ids:
            break
        out.append(tok)
        llm.eval([tok])
    llm.reset()
    member._context = []
    return out


@pytest.fixture(scope="module")
def pair(smol, gemma) -> Ensemble:
    return Ensemble([smol, gemma])


@pytest.mark.parametrize("prompt", PROMPTS)
def test_single_member_ensemble_is_the_member_own_greedy_decoding(real_member, prompt):
    own = own_greedy(real_member, prompt, 64)
    out = Ensemble([real_member]).generate(prompt, max_new_tokens=64)
    assert out.output_bytes == real_member.vocab.decode(own)
    assert len(out.steps) == len(own) + (out.finish_reason == "stop")
    # token for token: each step chose exactly the member's token
    assert [s.chosen.encode("utf-8", "backslashreplace") for s in out.steps[: len(own)]] == [
        real_member.vocab.pieces[t].decode("utf-8", "backslashreplace").encode("utf-8", "backslashreplace") for t in own
    ]


def test_pair_generates_and_records_every_step(pair):
    out = pair.generate("The capital of France is", max_new_tokens=12)
    assert out.finish_reason in {"stop", "length"}
    assert "Paris" in out.text
    for step in out.steps:
        assert 1 <= step.union_size <= 20  # k=10 per member, 2 members
        assert set(step.member_probs) == {"smollm2-135m-instruct", "gemma3-270m"}
        assert sum(c.prob for c in step.union) == pytest.approx(1.0)
        for name in step.member_probs:
            assert sum(c.members[name] for c in step.union) == pytest.approx(1.0)
        best = max(step.union, key=lambda c: c.prob)
        assert best.text == step.chosen  # greedy picks the argmax of the average
    assert out.timing.steps == len(out.steps) and out.timing.decode_s > 0


def test_no_member_re_encodes_the_context(pair):
    before = [m.n_evaluated for m in pair.members]
    out = pair.generate("Write a sentence about the sea. The sea", max_new_tokens=40, ignore_eos=True)
    assert out.timing.steps == 40
    for m, b, n_prompt in zip(pair.members, before, out.prompt_tokens.values()):
        evaluated = m.n_evaluated - b
        # prompt once (at most) + about one token per step, plus small rollbacks
        assert evaluated <= n_prompt + 40 * 2, (m.name, evaluated)


def test_kv_cache_prefix_is_reused_across_generations(pair):
    shared = (
        "Question: what is the boiling point of water at sea level in Celsius?\nAnswer: 100 degrees\n\n"
        "Question: what is the freezing point of water at sea level in Celsius?\nAnswer: 0 degrees\n\n"
        "Question: at what temperature are Celsius and Fahrenheit equal?\nAnswer: minus 40\n\n"
    )
    first = shared + "Question: and in Fahrenheit?\nAnswer:"
    second = shared + "Question: what is the boiling point of water in Kelvin?\nAnswer:"
    pair.generate(first, max_new_tokens=1)
    before = [m.n_evaluated for m in pair.members]
    pair.generate(second, max_new_tokens=1)  # one step: the prompt is all that is evaluated
    for m, b in zip(pair.members, before):
        a, c = (m.tokenize(t.encode(), add_bos=True) for t in (first, second))
        # Only whole aligned chunks of the shared prefix are reused (history-independent reuse):
        # the new question and the partial chunk before it are evaluated again.
        reused = common_prefix(a, c) // PREFILL_CHUNK * PREFILL_CHUNK
        assert reused >= 2 * PREFILL_CHUNK, m.name
        assert m.n_evaluated - b == len(c) - reused, m.name


def test_stop_string_spanning_steps_is_not_emitted(pair):
    free = pair.generate("Count: 1, 2, 3, 4,", max_new_tokens=16, ignore_eos=True)
    assert " 6," in free.text
    stop = " 6,"
    out = pair.generate("Count: 1, 2, 3, 4,", max_new_tokens=16, ignore_eos=True, stop=[stop])
    assert out.finish_reason == "stop" and out.stop_reason == stop
    assert out.text == free.text[: free.text.index(stop)]
    # no single step held the whole stop string: it was found across steps
    assert not any(stop in s.chosen for s in out.steps)
    streamed = "".join(c.text for c in pair.stream("Count: 1, 2, 3, 4,", max_new_tokens=16, ignore_eos=True, stop=[stop]))
    assert streamed == out.text


def test_stream_concatenates_to_the_final_text(pair):
    chunks = list(pair.stream("你好！今天", max_new_tokens=12, ignore_eos=True))
    final = chunks[-1].output
    assert final is not None
    assert "".join(c.text for c in chunks) == final.text
    for c in chunks:
        assert "\ufffd" not in c.text  # partial UTF-8 is held back, never shown broken


def test_chat_mode_uses_each_member_own_template(smol, qwen05):
    # Both instruction-tuned, both ChatML, different tokenizers and default system prompts.
    out = Ensemble([smol, qwen05]).generate(
        [{"role": "user", "content": "What is the capital of France?"}], chat=True, max_new_tokens=20
    )
    assert out.prompt_tokens["smollm2-135m-instruct"] != out.prompt_tokens["qwen2.5-coder-0.5b-instruct"]
    assert "Paris" in out.text


def test_primary_mode_follows_the_primary_tokens(smol, gemma):
    prompt = "Once upon a time, in a village in China called"
    ens = Ensemble([smol, gemma], primary="gemma3-270m")
    ens.generate(prompt, max_new_tokens=1)  # warm the KV cache with the prompt
    before = gemma.n_evaluated
    out = ens.generate(prompt, max_new_tokens=24, ignore_eos=True)
    # Gemma appends one of its own tokens per step and never rolls back: exactly one
    # evaluated token per step after the prompt.  The prompt holds no whole aligned chunk
    # (the only part of a cache reused across generations), so it is evaluated again.
    assert out.prompt_tokens["gemma3-270m"] < PREFILL_CHUNK
    assert gemma.n_evaluated - before == out.prompt_tokens["gemma3-270m"] + out.timing.steps - 1
    # canonical mode on the same prompt re-tokenizes Gemma's view; output may differ,
    # but both are valid continuations made of Gemma-spellable bytes
    ids = gemma.vocab.encode(out.output_bytes, gemma.tokenize)
    assert gemma.vocab.decode(ids) == out.output_bytes


def test_sampling_is_reproducible_with_seed(pair):
    cfg = GenerationConfig(max_new_tokens=16, temperature=1.0, top_p=0.95, seed=1234, ignore_eos=True)
    a = pair.generate("My favourite animal is", cfg).text
    b = pair.generate("My favourite animal is", cfg).text
    assert a == b
    others = {pair.generate("My favourite animal is", cfg, seed=s).text for s in range(5)}
    assert len(others) > 1  # sampling really samples


def test_bad_settings_and_input_raise_clear_errors(smol, gemma):
    with pytest.raises(InvalidConfigError, match="k must be"):
        Ensemble([smol, gemma], k=0)
    with pytest.raises(InvalidConfigError, match="3 weights given for 2 members"):
        Ensemble([smol, gemma], weights=[1, 2, 3])
    with pytest.raises(InvalidConfigError, match="positive"):
        Ensemble([smol, gemma], weights=[1, -1])
    with pytest.raises(InvalidConfigError, match="primary 'nope' is not a member"):
        Ensemble([smol, gemma], primary="nope")
    ens = Ensemble([smol, gemma])
    with pytest.raises(InvalidInputError, match="not valid UTF-8"):
        ens.generate(b"caf\xe9", max_new_tokens=1)
    with pytest.raises(ContextLengthError, match="context"):
        ens.generate("word " * 3000, max_new_tokens=1)
    with pytest.raises(InvalidConfigError, match="temperature"):
        ens.generate("x", temperature=-1)


def test_without_prefix_cache_every_generation_starts_cold(smol, gemma):
    ens = Ensemble([smol, gemma], prefix_cache=False)
    prompt = "The three primary colours are"
    first = ens.generate(prompt, max_new_tokens=6)
    ens.generate("A completely different history: 1, 2, 3, 4,", max_new_tokens=6)
    before = [m.n_evaluated for m in ens.members]
    again = ens.generate(prompt, max_new_tokens=6)
    assert again.output_bytes == first.output_bytes
    for m, b, n_prompt in zip(ens.members, before, again.prompt_tokens.values()):
        assert m.n_evaluated - b >= n_prompt  # the whole prompt was evaluated again, not reused
