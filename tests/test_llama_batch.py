"""Many sequences in one llama.cpp context (``n_seq``), on the real models.

Batched kernels round differently from a single sequence's: on these Q4_K models a row's
next-token distribution moves by a total variation of up to ~0.09 (measured; the single
sequence path itself moves as much between evaluating a prompt in 32-token chunks and in one
batch).  A bookkeeping error (a row reading another row's cells, a stale tail, a missing
rollback) moves it by 0.8 or more.  So rows are compared with the single-sequence
distribution at ``TV < 0.15``, and token counts prove what was evaluated.  Texts are compared
exactly on prompts whose continuation is not a near-tie.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from unite_llm.engine import DecodeBatch, Ensemble
from unite_llm.errors import InvalidConfigError
from unite_llm.members import batch_rows, supports_batch
from unite_llm.members.llama_cpp import PREFILL_CHUNK, LlamaCppMember, prompt_plan
from unite_llm.sampling import GenerationConfig

from .tiers import model_fixture

ROUNDING_TV = 0.15

CONFIDENT = [
    "1, 2, 3, 4, 5, 6,",
    "Monday, Tuesday, Wednesday,",
    "January, February, March, April,",
    "A B C D E F G",
]


def tv(a: np.ndarray, b: np.ndarray) -> float:
    """Total variation distance between the softmaxes of two logit vectors."""
    pa = np.exp(a - a.max())
    pb = np.exp(b - b.max())
    return 0.5 * float(np.abs(pa / pa.sum() - pb / pb.sum()).sum())


@model_fixture(scope="module")
def gemma4() -> Iterator[LlamaCppMember]:
    m = LlamaCppMember("gemma3-270m", n_ctx=1024, n_threads=1, n_seq=4)
    yield m
    m.close()


@model_fixture(scope="module")
def smol4() -> Iterator[LlamaCppMember]:
    m = LlamaCppMember("smollm2-135m-instruct", n_ctx=1024, n_threads=1, n_seq=4)
    yield m
    m.close()


def single(member: LlamaCppMember, ctx: list[int]) -> np.ndarray:
    member.start_sequence()
    return np.array(member.next_logits(ctx))


def by_the_plan(m: LlamaCppMember, name: int, ctx: list[int]) -> np.ndarray:
    """Row ``name``'s logits, its tokens sent to llama_decode in the single sequence's groups
    (:func:`prompt_plan`: aligned chunks, the remainder, the last token alone)."""
    out = np.zeros(0)
    for end in prompt_plan(len(ctx)):
        out = m.next_logits_batch([ctx[:end]], rows=[name])[0].copy()
    return out


@pytest.mark.parametrize("fixture", ["smol4", "gemma4"])
@pytest.mark.slow  # loads a model itself
def test_a_row_decoded_as_the_single_sequence_is_bit_identical(fixture: str, request: pytest.FixtureRequest) -> None:
    """The batch's own bookkeeping adds nothing to the rounding: where a row's tokens reach
    ``llama_decode`` in the single sequence's groups, in a batch context holding no other
    cells, its logits equal the single sequence's bit for bit.  What is left between batched
    and single decoding is llama.cpp's: the number of tokens in a decode (kernels) and other
    sequences' cells interleaved with the row's in the unified cache (attention sums)."""
    m: LlamaCppMember = request.getfixturevalue(fixture)
    # No BOS, distinct first tokens: a joining row shares no cell computed in another grouping.
    texts = (
        "Question: which planet is known as the red planet? Give the answer in one word, then explain"
        " in a sentence or two why it is called that, and who named it.\nAnswer:",
        "Once upon a time, in a small village by the sea,",
        "def fibonacci(n):\n    return",
    )
    ctxs = [m.tokenize(t.encode(), add_bos=False) for t in texts]
    assert len(ctxs[0]) > PREFILL_CHUNK + 2  # an aligned chunk, a remainder and the last token
    for name, ctx in enumerate(ctxs):
        m.reset()
        assert np.array_equal(by_the_plan(m, name, ctx), single(m, ctx)), name
    # With other sequences' cells in the cache the same row is within rounding (not bits).
    m.reset()
    m.next_logits_batch([ctxs[1], ctxs[2]], rows=[10, 11])
    assert tv(by_the_plan(m, 20, ctxs[0]), single(m, ctxs[0])) < ROUNDING_TV
    m.reset()


def test_rows_roll_back_share_prefixes_and_join_each_on_its_own_sequence(gemma4: LlamaCppMember) -> None:
    m = gemma4
    tok = lambda text: m.tokenize(text.encode(), add_bos=True)  # noqa: E731
    shared = "Question: which planet is known as the red planet?\nAnswer:"
    ctxs = [tok(shared + " Mars"), tok("The capital of France is"), tok("Once upon a time, there was")]
    first = m.next_logits_batch(ctxs, rows=[1, 2, 3])
    assert first.shape == (3, len(m.vocab))
    for b, ctx in enumerate(ctxs):
        assert tv(first[b], single(m, ctx)) < ROUNDING_TV, b

    # Row 1 steps by one token, row 2 finishes, row 3's last two tokens are re-tokenised
    # (rolled back on its own sequence), row 4 joins sharing row 1's long prefix.
    step = [*ctxs[0], int(np.argmax(first[0]))]
    retok = [*ctxs[2][:-2], *m.tokenize(b" an old", add_bos=False)]
    joined = tok(shared + " Jupiter")
    before = m.n_evaluated
    second = m.next_logits_batch([step, retok, joined], rows=[1, 3, 4])
    common = next(i for i, (a, b) in enumerate(zip(ctxs[0], joined)) if a != b)
    expected = 1 + (len(retok) - (len(ctxs[2]) - 2)) + (len(joined) - common)
    assert m.n_evaluated - before == expected  # each row evaluated only its new suffix
    for b, ctx in enumerate([step, retok, joined]):
        assert tv(second[b], single(m, ctx)) < ROUNDING_TV, b
    # The wrong row would be far off: the check above can fail.
    assert tv(second[0], single(m, retok)) > 0.5


def test_batch_limits_are_checked(smol4: LlamaCppMember) -> None:
    assert supports_batch(smol4) and batch_rows(smol4) == 4
    ctx = smol4.tokenize(b"Hello", add_bos=True)
    with pytest.raises(ValueError, match="5 rows, but n_seq=4"):
        smol4.next_logits_batch([ctx] * 5)
    with pytest.raises(ValueError, match="name each context once"):
        smol4.next_logits_batch([ctx, ctx], rows=[7, 7])
    for bad in (0, True, 10_000):
        with pytest.raises(InvalidConfigError, match="n_seq must be an integer"):
            LlamaCppMember("smollm2-135m-instruct", n_seq=bad)


def test_one_sequence_members_decode_batches_row_by_row(smol: LlamaCppMember) -> None:
    assert not supports_batch(smol)
    assert Ensemble([smol]).max_batch == 1


def test_rows_finish_at_different_steps_join_a_running_batch_and_leave_when_cancelled(
    smol4: LlamaCppMember, gemma4: LlamaCppMember
) -> None:
    ens = Ensemble([smol4, gemma4])
    assert ens.max_batch == 4
    alone = {p: ens.generate(p, max_new_tokens=6).text for p in CONFIDENT}
    with ens.exclusive():
        batch = DecodeBatch(ens.engine, batched=True)
        short = batch.add(ens.start_tracks(CONFIDENT[0], chat=False), GenerationConfig(max_new_tokens=3))
        cancelled = batch.add(ens.start_tracks(CONFIDENT[1], chat=False), GenerationConfig(max_new_tokens=30))
        full = batch.add(ens.start_tracks(CONFIDENT[2], chat=False), GenerationConfig(max_new_tokens=6))
        outputs: dict[int, str] = {}
        texts: dict[int, str] = {}
        steps = 0
        late = None
        while batch:
            for rid, chunk in batch.step():
                texts[rid] = texts.get(rid, "") + chunk.text
                if chunk.output is not None:
                    outputs[rid] = chunk.output.text
                    assert len(chunk.output.steps) == {short: 3, full: 6, late: 6}[rid]
            steps += 1
            if steps == 2:  # joins the running batch: its prompt is evaluated with the others' next tokens
                late = batch.add(ens.start_tracks(CONFIDENT[3], chat=False), GenerationConfig(max_new_tokens=6))
            if steps == 4:
                batch.cancel(cancelled)
                shown = texts[cancelled]
        assert steps == 8  # the late row ran steps 3..8
    assert cancelled not in outputs and texts[cancelled] == shown  # nothing more after the cancel
    assert outputs[short] == ens.generate(CONFIDENT[0], max_new_tokens=3).text
    assert outputs[full] == alone[CONFIDENT[2]]
    assert outputs[late] == alone[CONFIDENT[3]]
    assert all(texts[r] == outputs[r] for r in outputs)  # the streamed pieces add up to the output


def test_generate_batch_on_llama_cpp_members_decodes_together(smol4: LlamaCppMember, gemma4: LlamaCppMember) -> None:
    ens = Ensemble([smol4, gemma4])
    prompts = CONFIDENT + CONFIDENT[:2]  # 6 prompts: two groups of max_batch = 4
    for m in (smol4, gemma4):
        m.reset()
    outs = ens.generate_batch(prompts, max_new_tokens=5)
    for m in (smol4, gemma4):  # the last group's two rows ran on sequences of the batch context
        assert m._seqs is not None and sum(bool(t) for t in m._seqs.tokens.values()) >= 2
    assert [o.text for o in outs] == [ens.generate(p, max_new_tokens=5).text for p in prompts]


def test_rows_with_and_without_ignore_eos_step_in_one_batch(smol4: LlamaCppMember, gemma4: LlamaCppMember) -> None:
    ens = Ensemble([smol4, gemma4])
    with ens.exclusive():
        batch = DecodeBatch(ens.engine, batched=True)
        forced = batch.add(ens.start_tracks("Hello", chat=False), GenerationConfig(max_new_tokens=5, ignore_eos=True))
        plain = batch.add(ens.start_tracks(CONFIDENT[0], chat=False), GenerationConfig(max_new_tokens=5))
        outputs = {}
        while batch:
            outputs.update({rid: chunk.output for rid, chunk in batch.step() if chunk.output is not None})
    assert len(outputs[forced].steps) == 5 and not any(s.end for s in outputs[forced].steps)
    assert outputs[plain].text == ens.generate(CONFIDENT[0], max_new_tokens=5).text
