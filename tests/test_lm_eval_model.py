"""lm-eval's ``unite`` model in process, and the ensemble log-likelihood behind it (unite_llm.loglik).

On the real models (SmolLM2-135M byte-level BPE, Gemma-3-270M SentencePiece): a one-member
ensemble's log-likelihood is the member's own, checked against llama.cpp's logits
(``logits_all=True``, log-softmax computed here) on 20 continuations, including ones that
split a multi-byte UTF-8 character; a two-member one is the mixture of those; and lm-eval
runs the local tasks of ``tests/data/lm_eval`` (no network) through the model.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import llama_cpp
import numpy as np
import pytest
from lm_eval import simple_evaluate
from lm_eval.api.instance import Instance
from lm_eval.api.registry import get_model
from lm_eval.tasks import TaskManager
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from unite_llm.engine import Ensemble
from unite_llm.errors import InvalidConfigError
from unite_llm.lm_eval_model import CHAT_MARK, UniteLM, as_context
from unite_llm.loglik import (
    Chat,
    ensemble_loglik,
    ensemble_rolling_loglik,
    greedy_prefixes,
    greedy_reproduces,
    member_loglik,
    member_rolling_loglik,
    mixture,
    rolling_windows,
)
from unite_llm.members.base import log_softmax
from unite_llm.members.llama_cpp import LlamaCppMember
from unite_llm.models import resolve_gguf
from unite_llm.vocab import incomplete_utf8_tail

from .tiers import model_fixture

ROOT = Path(__file__).resolve().parents[1]
TASKS = ROOT / "tests" / "data" / "lm_eval"
ALIASES = {"smol": "smollm2-135m-instruct", "gemma": "gemma3-270m"}

# (context, continuation): plain ones, contexts whose tail re-merges with the continuation
# (a trailing space or newline, digits, CJK), and splits inside a multi-byte UTF-8
# character (bytes: a partial character at the end of the context, as the ensemble's
# output can hold mid-step; str: a combining accent, a ZWJ emoji sequence).
CASES: list[tuple[str | bytes, str | bytes]] = [
    ("The capital of France is", " Paris"),
    ("Question: Who wrote Hamlet?\nAnswer:", " William Shakespeare"),
    ("2 + 2 =", " 4"),
    ("Answer: ", "Paris"),
    ("Caf", "é au lait"),
    (b"Caf" + "é".encode()[:1], "é".encode()[1:] + b" au lait"),
    ("Cafe", "\u0301 au lait"),
    ("I love ", "🍕 pizza"),
    (b"Pizza " + "🍕".encode()[:2], "🍕".encode()[2:] + b" time"),
    ("你", "好"),
    ("你".encode()[:2], "你".encode()[2:] + "好".encode()),
    ("東京は日本の", "首都です。"),
    ("", "Hello world"),
    ("Hello", ""),
    ("The quick brown fox", " jumps over the lazy dog."),
    ("def add(a, b):\n", "    return a + b\n"),
    ("Line one\n\n", "Line two"),
    ("Numbers: 12", "345"),
    ("Straße", "nbahn"),
    ("👨", "\u200d👩\u200d👧"),
]


def _b(text: str | bytes) -> bytes:
    return text if isinstance(text, bytes) else text.encode()


class Reference:
    """llama.cpp by itself: its own tokenizer, logits at every position (``logits_all``).

    Batches of 32 from position 0, as the member's scorer evaluates a cold sequence
    (llama.cpp's results depend in the last bits on how tokens are batched).
    """

    def __init__(self, alias: str, member: LlamaCppMember) -> None:
        self.llm = llama_cpp.Llama(
            model_path=str(resolve_gguf(alias)),
            n_ctx=256,
            n_batch=32,
            n_threads=1,
            n_threads_batch=1,
            logits_all=True,
            verbose=False,
        )
        self.member = member
        bos = self.llm.token_bos()
        self.prefix = bos if bos >= 0 else self.llm.token_eos()

    def tokens(self, data: bytes) -> list[int]:
        """Valid UTF-8 through llama.cpp's tokenizer (BOS as the model wants it); a partial
        character at the end (no tokenizer takes it) spelled with the member's pieces for
        those bytes, as the decode loop spells it (``ByteVocab.spell``)."""
        cut = len(data) - incomplete_utf8_tail(data)
        ids = self.llm.tokenize(data[:cut], add_bos=True, special=True)
        return ids + self.member.vocab.spell(data[cut:])

    def logprob(self, tokens: list[int], start: int) -> float:
        self.llm.reset()
        self.llm.eval(tokens[:-1])
        rows = np.asarray(self.llm.scores[: len(tokens) - 1], dtype=np.float64)
        return float(sum(log_softmax(rows[t - 1])[tokens[t]] for t in range(start, len(tokens))))

    def loglik(self, context: bytes, continuation: bytes) -> float:
        base, full = self.tokens(context), self.tokens(context + continuation)
        start = next((i for i, (a, b) in enumerate(zip(base, full)) if a != b), min(len(base), len(full)))
        if start == 0:
            full, start = [self.prefix, *full], 1
        return self.logprob(full, start) if start < len(full) else 0.0

    def close(self) -> None:
        self.llm.close()


@model_fixture(scope="module")
def reference(request):
    made: dict[str, Reference] = {}

    def get(name: str) -> Reference:
        if name not in made:
            made[name] = Reference(ALIASES[name], request.getfixturevalue(name))
        return made[name]

    yield get
    for ref in made.values():
        ref.close()


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))


@pytest.fixture(scope="module")
def pair(smol, gemma) -> Ensemble:
    return Ensemble([smol, gemma], weights=[0.3, 0.7], k=10)  # not closed: the members are session fixtures


@pytest.mark.parametrize("name", ["smol", "gemma"])
def test_one_member_loglik_is_llama_cpp_s_own(name, request, reference) -> None:
    member: LlamaCppMember = request.getfixturevalue(name)
    ref = reference(name)
    solo = Ensemble([member])
    got, want = [], []
    for context, continuation in CASES:
        member.reset()  # cold, as the reference: the same batches, the same rounding
        got.append(ensemble_loglik(solo, context, continuation)[0])
        want.append(ref.loglik(_b(context), _b(continuation)))
    assert len(got) == 20
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    assert got[CASES.index(("Hello", ""))] == 0.0
    assert all(g < 0 for g, (_, c) in zip(got, CASES) if c)


def test_a_split_character_is_scored_as_the_decode_loop_sees_it(smol, gemma) -> None:
    """Context and continuation split inside "é": each member scores bytes that end the
    continuation exactly, starting where its tokenization of the context stops agreeing."""
    for member in (smol, gemma):
        scored = member_loglik(member, b"Caf\xc3", b"\xa9 au lait")
        assert scored.span.endswith(b"\xa9 au lait") and b"Caf\xc3\xa9 au lait".endswith(scored.span)
        assert member.vocab.decode(member.tokenize("Café au lait".encode())).endswith(scored.span)


def test_the_pair_is_the_mixture_of_its_members(smol, gemma, pair) -> None:
    alone = {m.name: Ensemble([m]) for m in (smol, gemma)}
    for context, continuation in [CASES[0], CASES[3], CASES[5], CASES[11]]:
        mix, each = ensemble_loglik(pair, context, continuation)
        ll_s = ensemble_loglik(alone[smol.name], context, continuation)[0]
        ll_g = ensemble_loglik(alone[gemma.name], context, continuation)[0]
        assert each == pytest.approx([ll_s, ll_g], abs=1e-9)
        assert mix == pytest.approx(math.log(0.3 * math.exp(ll_s) + 0.7 * math.exp(ll_g)), abs=1e-9)
        assert min(ll_s, ll_g) <= mix <= max(ll_s, ll_g)
    text = "The Seine flows through Paris. 東京 is far away."
    mix, (r_s, r_g) = ensemble_rolling_loglik(pair, text)
    assert mix == pytest.approx(math.log(0.3 * math.exp(r_s) + 0.7 * math.exp(r_g)), abs=1e-9)
    assert mixture([-1.5], [1.0]) == -1.5
    assert mixture([-math.inf, -2.0], [0.5, 0.5]) == pytest.approx(-2.0 + math.log(0.5))


def test_rolling_windows_are_lm_eval_s() -> None:
    tokens = list(range(100, 123))
    for max_len in (1, 2, 4, 7, 23, 40):
        ours = [(seq[:start], seq[start:]) for seq, start in rolling_windows(tokens, 0, max_len)]
        theirs = [make_disjoint_window(w) for w in get_rolling_token_windows(tokens, 0, max_len, 1)]
        assert ours == [(list(a), list(b)) for a, b in theirs]
        assert all(len(a) + len(b) <= max_len + 1 for a, b in ours)


@pytest.mark.parametrize("name", ["smol", "gemma"])
def test_rolling_loglik_over_windows_is_llama_cpp_s_own(name, request, reference, monkeypatch) -> None:
    member: LlamaCppMember = request.getfixturevalue(name)
    ref = reference(name)
    text = "The Seine flows through Paris, and the Thames through London. Café, 東京."
    tokens = member.vocab.encode(text.encode(), member.tokenize)
    monkeypatch.setattr(member, "n_ctx", 9)  # windows of 8 tokens roll over the text
    member.reset()
    got = member_rolling_loglik(member, text)
    want = 0.0
    for inputs, preds in map(make_disjoint_window, get_rolling_token_windows(tokens, ref.prefix, 8, 1)):
        want += ref.logprob(list(inputs) + list(preds), len(inputs))
    assert len(tokens) > 8  # two windows at least
    assert got == pytest.approx(want, abs=1e-4)
    monkeypatch.undo()
    member.reset()
    whole = member_rolling_loglik(member, text)  # one window: the text after the prefix token
    assert whole == pytest.approx(ref.logprob([ref.prefix, *tokens], 1), abs=1e-4)


def test_is_greedy_is_the_ensemble_s_own_greedy_decode(pair) -> None:
    context = "Question: What is the capital of France?\nAnswer:"
    out = pair.generate(context, max_new_tokens=4)
    assert out.text
    assert greedy_reproduces(pair, context, out.text)
    assert greedy_reproduces(pair, context, out.output_bytes[:1])
    assert not greedy_reproduces(pair, context, out.text + " zebra" * 3)
    assert not greedy_reproduces(pair, context, " Zzyzx")
    assert greedy_prefixes(pair, context, [out.text, "", " Zzyzx", out.text[:2]]) == [True, True, False, True]
    assert greedy_prefixes(pair, "", [" Paris"]) == [False]  # SmolLM2 has no BOS: the ensemble cannot start from nothing
    lm = UniteLM(ensemble=pair)
    reqs = [Instance("loglikelihood", {}, (context, c), i) for i, c in enumerate([out.text, " Zzyzx"])]
    (ll_a, greedy_a), (ll_b, greedy_b) = lm.loglikelihood(reqs, disable_tqdm=True)
    assert greedy_a and not greedy_b and ll_a > ll_b
    assert lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, ("Hello world.",), 0)], disable_tqdm=True) == [
        pytest.approx(ensemble_rolling_loglik(pair, "Hello world.")[0], abs=1e-9)
    ]
    lm.close()


def test_generation_settings_from_lm_eval() -> None:
    lm = UniteLM.__new__(UniteLM)  # the settings need no models
    lm.max_gen_toks, lm.seed, lm._warned = 256, 7, set()
    c = lm.generation_config({"until": "\n\n", "max_gen_toks": 12, "do_sample": False, "temperature": 0.7})
    assert (c.stop, c.max_new_tokens, c.temperature, c.seed) == (("\n\n",), 12, 0.0, None)
    c = lm.generation_config({"until": ["Q:", ""], "do_sample": True, "temperature": 0.5, "top_p": 0.9, "top_k": 3})
    assert (c.stop, c.max_new_tokens, c.temperature, c.top_p, c.seed) == (("Q:",), 256, 0.5, 0.9, 7)
    assert lm._warned == {"top_k"}
    assert lm.generation_config(None).greedy


def test_a_long_context_is_cut_on_the_left_to_fit(pair, monkeypatch) -> None:
    lm = UniteLM(ensemble=pair)
    for m in pair.members:
        monkeypatch.setattr(m, "n_ctx", 48)
    context = " ".join(f"item {i}: café 東京;" for i in range(40)) + " last"
    fitted = lm.fit_context(context, 8)
    assert context.endswith(fitted) and len(fitted) < len(context)
    assert all(len(m.tokenize(fitted.encode(), add_bos=True, special=True)) + 8 < 48 for m in pair.members)
    assert lm.fit_context("short", 8) == "short"
    out = pair.generate([fitted], max_new_tokens=8)[0]
    assert out.finish_reason in ("stop", "length")
    lm.close()


def test_model_args_are_checked_before_loading() -> None:
    with pytest.raises(InvalidConfigError, match="unknown model_args for unite: pretrained"):
        UniteLM(pretrained="gpt2")
    with pytest.raises(InvalidConfigError, match="empty entry"):
        UniteLM(members="smollm2-135m-instruct++gemma3-270m")
    with pytest.raises(InvalidConfigError, match="batch_size"):
        UniteLM(members="smollm2-135m-instruct", batch_size="many")


@pytest.mark.slow  # loads a model itself
def test_model_args_from_a_config_file(tmp_path) -> None:
    """``config=FILE`` (as ``unite select --write`` writes it); the arguments given override it."""
    path = tmp_path / "picked.yaml"
    path.write_text("members: [smollm2-135m-instruct]\nk: 3\nweights: [1.0]\n", encoding="utf-8")
    lm = UniteLM(config=str(path), n_ctx=256, n_threads=1)
    assert (lm.ensemble.names, lm.ensemble.method.k, lm.ensemble.members[0].n_ctx) == (["smollm2-135m-instruct"], 3, 256)
    lm.close()
    lm = UniteLM.create_from_arg_string(f"config={path},k=5,n_ctx=256,n_threads=1,max_gen_toks=7", {"batch_size": "4"})
    assert (lm.ensemble.method.k, lm.max_gen_toks, lm.batch_size) == (5, 7, 4)
    lm.close()


def _evaluate(model: UniteLM | str, task: str, limit: int, **kwargs):
    return simple_evaluate(
        model=model,
        tasks=[task],
        task_manager=TaskManager(include_path=str(TASKS), include_defaults=False),  # indexing lm-eval's own tasks takes ~20 s
        limit=limit,
        log_samples=True,
        bootstrap_iters=0,
        **kwargs,
    )


def test_lm_eval_multiple_choice_in_process(pair) -> None:
    n = 3
    results = _evaluate(UniteLM(ensemble=pair), "unite_mc", n)
    samples = results["samples"]["unite_mc"]
    assert len(samples) == n
    for s in samples:
        lls = [float(r[0][0]) for r in s["resps"]]
        for (context, continuation), ll in zip(s["arguments"], lls):
            assert continuation.startswith(" ")  # lm-eval's target delimiter belongs to the continuation
            assert ll == pytest.approx(ensemble_loglik(pair, context, continuation)[0], abs=1e-9)
        assert s["acc"] == float(int(np.argmax(lls)) == s["target"])
    acc = results["results"]["unite_mc"]["acc,none"]
    assert acc == pytest.approx(np.mean([s["acc"] for s in samples]))
    assert acc >= 0.5  # capitals, freezing point, opposites: easy for the pair


def test_scores_file_records_every_member_and_resumes(pair, tmp_path) -> None:
    """``scores_file``: each member's log-likelihood per request; a second run reads them
    back (no member evaluates anything) and reports the same; a line cut by a kill is
    ignored and only that request is scored again."""
    path = tmp_path / "scores.jsonl"
    n = 2
    first = _evaluate(UniteLM(ensemble=pair, scores_file=str(path), greedy_check=False), "unite_mc", n)
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert rows and all(r["members"] == pair.names for r in rows)
    for r in rows:
        lls = [member_loglik(m, r["context"], r["continuation"]).logprob for m in pair.members]
        np.testing.assert_allclose(r["member_logliks"], lls, atol=1e-9)
        assert r["loglik"] == pytest.approx(mixture(lls, pair.weights), abs=1e-12)
    lines = path.read_text(encoding="utf-8").splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2], encoding="utf-8")  # a torn last line
    lm = UniteLM(ensemble=pair, scores_file=str(path), greedy_check=False)
    assert lm.scores is not None and len(lm.scores.known) == len(rows) - 1
    second = _evaluate(lm, "unite_mc", n)
    lm.close()
    whole = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            whole.append(json.loads(line))
    assert len(whole) == len(rows)  # the torn request alone was scored (and appended) again
    for a, b in zip(first["samples"]["unite_mc"], second["samples"]["unite_mc"]):
        assert [r[0][0] for r in a["resps"]] == pytest.approx([r[0][0] for r in b["resps"]], abs=1e-9)


def test_lm_eval_generate_until_in_process(pair) -> None:
    n = 2
    results = _evaluate(UniteLM(ensemble=pair, batch_size=2), "unite_gen", n)
    samples = results["samples"]["unite_gen"]
    assert len(samples) == n
    for s in samples:
        ((context, gen),) = s["arguments"]
        assert gen["until"] == ["\n", "."] and gen["max_gen_toks"] == 8
        want = pair.generate(context, max_new_tokens=8, stop=["\n", "."]).text
        assert s["resps"][0][0] == want
        assert "\n" not in want and "." not in want
    assert 0.0 <= results["results"]["unite_gen"]["exact_match,strip"] <= 1.0


@pytest.mark.slow  # loads a model itself
def test_registry_and_model_args_string() -> None:
    """``--model unite --model_args ...`` as lm-eval parses them (a member loaded from its alias)."""
    assert get_model("unite") is UniteLM
    assert get_model("hf").__name__ == "HFLM"  # lm-eval's own models are still there
    args = "members=smollm2-135m-instruct,k=5,n_ctx=512,n_threads=1,greedy_check=False"
    results = _evaluate("unite", "unite_mc", 1, model_args=args)
    assert 0.0 <= results["results"]["unite_mc"]["acc,none"] <= 1.0
    assert results["config"]["model"] == "unite"


@pytest.mark.slow  # loads a model itself
def test_lm_eval_command_line(tmp_path) -> None:
    """``python -m unite_llm.lm_eval_model`` is lm-eval's own command line with ``unite`` registered."""
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", HF_DATASETS_CACHE=str(tmp_path / "hf"))
    cmd = [sys.executable, "-m", "unite_llm.lm_eval_model", "run", "--model", "unite"]
    cmd += ["--model_args", "members=smollm2-135m-instruct+gemma3-270m,weights=0.6+0.4,n_ctx=512,n_threads=1,greedy_check=False"]
    cmd += ["--tasks", "unite_mc", "--include_path", str(TASKS), "--limit", "1", "--output_path", str(tmp_path / "out")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "unite_mc" in proc.stdout and "acc" in proc.stdout
    (saved,) = (tmp_path / "out").rglob("results_*.json")
    config = json.loads(saved.read_text(encoding="utf-8"))["config"]
    assert config["model"] == "unite" and config["model_args"]["weights"] == "0.6+0.4"


def test_chat_contexts_use_each_member_s_own_template(smol, gemma) -> None:
    solo = Ensemble([smol])
    lm = UniteLM(ensemble=solo)
    user = {"role": "user", "content": "What is the capital of France?"}
    marked = lm.apply_chat_template([user])
    assert marked.startswith(CHAT_MARK) and as_context(marked) == Chat((user,), True)
    assert as_context("plain text") == "plain text"
    assert "<|im_start|>assistant" in Chat((user,)).render(smol)
    prefilled = Chat((user, {"role": "assistant", "content": "The answer is"}), add_generation_prompt=False)
    assert prefilled.render(smol).endswith("<|im_start|>assistant\nThe answer is")
    assert greedy_prefixes(solo, prefilled, [" Paris"]) == [False]  # no new turn to decode from
    with pytest.raises(InvalidConfigError, match="no chat template"):
        member_loglik(gemma, Chat((user,)), " Paris")  # a base model is refused, as in unite generate --chat
    assert lm.tokenizer_name == "unite:smollm2-135m-instruct" and "im_start" in lm.chat_template(True)

    results = _evaluate(lm, "unite_gen", 1, apply_chat_template=True)
    ((context, gen),) = results["samples"]["unite_gen"][0]["arguments"]
    chat = as_context(context)
    assert isinstance(chat, Chat) and chat.messages[-1]["role"] == "user" and gen["max_gen_toks"] == 8
    want = solo.generate(list(chat.messages), chat=True, max_new_tokens=8, stop=["\n", "."]).text
    assert results["samples"]["unite_gen"][0]["resps"][0][0] == want

    results = _evaluate(lm, "unite_mc", 1, apply_chat_template=True)
    sample = results["samples"]["unite_mc"][0]
    for (context, continuation), resp in zip(sample["arguments"], sample["resps"]):
        own = ensemble_loglik(solo, as_context(context), continuation)[0]
        assert float(resp[0][0]) == pytest.approx(own, abs=1e-9)
        assert own == pytest.approx(member_loglik(smol, as_context(context).render(smol), continuation).logprob, abs=1e-9)
