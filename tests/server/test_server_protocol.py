"""The response side on hand-built step records: END is told apart by its flag, not its text.

A piece of text that reads ``<END>`` (a tokenizer may well have one) is output like any
other and counts in ``usage`` and ``logprobs``; the END step (``StepRecord.end``) and END
candidates (``union[i].end``) do not, whatever they read.  The bodies are built by the
server's own functions and :class:`~unite_llm.server.serving.OpenAIServing` (the test
server's, for the members' names), the stream from a job fed by hand, and the official
``openai`` types must parse what comes out.
"""

from __future__ import annotations

import asyncio
import json
import math

import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from unite_llm.engine import GenerationOutput, StepRecord, StreamChunk, Timing, UnionEntry
from unite_llm.sampling import GenerationConfig
from unite_llm.server.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    CompletionStreamResponse,
    DeltaMessage,
    FinishReason,
    Usage,
)
from unite_llm.server.scheduler import ChunkEvent, DoneEvent, Job
from unite_llm.server.serving import OpenAIServing, chat_logprobs, completion_logprobs, text_steps, usage_of


def cand(text: str, prob: float, *, end: bool = False) -> UnionEntry:
    return UnionEntry(text=text, end=end, prob=prob, members={"a": prob, "b": prob}, rules={})


def step(index: int, chosen: str, prob: float, *others: UnionEntry, end: bool = False) -> StepRecord:
    union = [cand(chosen, prob, end=end), *others]
    return StepRecord(index, chosen, prob, len(union), {"a": prob, "b": prob}, union=union, end=end)


STEPS = [
    step(0, "Hello", 0.6, cand("<END>", 0.3, end=True), cand("Hi", 0.1)),
    # A real piece that reads "<END>", with END itself (reading the same) as a candidate.
    step(1, "<END>", 0.5, cand("<END>", 0.4, end=True), cand("!", 0.1)),
    # The END step, with the real "<END>" piece as a candidate.
    step(2, "<END>", 0.7, cand("<END>", 0.3), end=True),
]
TEXT = "Hello<END>"


def output(steps: list[StepRecord] = STEPS) -> GenerationOutput:
    return GenerationOutput(TEXT, TEXT.encode(), "stop", None, steps, Timing(steps=len(steps)), {"a": 4, "b": 5})


def test_text_steps_and_usage_go_by_the_flag():
    assert text_steps(STEPS) == STEPS[:2]
    assert usage_of([output()]) == Usage(prompt_tokens=5, completion_tokens=2, total_tokens=7)
    assert usage_of([output(STEPS[:2]), output()]).completion_tokens == 4


def test_completion_logprobs_keep_the_piece_and_drop_end():
    lp = completion_logprobs(STEPS, 3).model_dump()
    assert lp["tokens"] == ["Hello", "<END>"] and "".join(lp["tokens"]) == TEXT
    assert lp["token_logprobs"] == [math.log(0.6), math.log(0.5)]
    # Of each step's top 3, the END candidate is left out, the real "<END>" piece kept.
    assert lp["top_logprobs"] == [{"Hello": math.log(0.6), "Hi": math.log(0.1)}, {"<END>": math.log(0.5), "!": math.log(0.1)}]
    assert lp["text_offset"] == [0, 5]
    assert completion_logprobs(STEPS, 0).top_logprobs is None
    assert completion_logprobs(STEPS[2:], 3).tokens == []


def test_chat_logprobs_keep_the_piece_and_drop_end():
    content = chat_logprobs(STEPS, 3).model_dump()["content"]
    assert [t["token"] for t in content] == ["Hello", "<END>"]
    assert content[1] == {
        "token": "<END>",
        "logprob": math.log(0.5),
        "bytes": list(b"<END>"),
        "top_logprobs": [
            {"token": "<END>", "logprob": math.log(0.5), "bytes": list(b"<END>")},
            {"token": "!", "logprob": math.log(0.1), "bytes": [33]},
        ],
    }


def test_models_omit_only_what_openai_omits():
    assert DeltaMessage().model_dump() == {}
    assert DeltaMessage(role="assistant", content="").model_dump() == {"role": "assistant", "content": ""}
    chunk = CompletionStreamResponse(id="cmpl-1", created=1, model="m", choices=[]).model_dump()
    assert chunk == {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m", "choices": []}
    assert json.dumps(FinishReason.LENGTH) == '"length"'


@pytest.fixture(scope="module")
def serving(server) -> OpenAIServing:
    return server.app.state.serving


def test_completion_body(serving, server):
    req = CompletionRequest(model=server.model, prompt="x", logprobs=2, unite={"explain": True})
    body = serving.completions.response([output()], req).model_dump()
    assert list(body) == ["id", "object", "created", "model", "choices", "usage", "unite"]
    (choice,) = body["choices"]
    assert list(choice) == ["index", "text", "logprobs", "finish_reason"]
    assert choice["text"] == TEXT and choice["finish_reason"] == "stop"
    assert choice["logprobs"]["tokens"] == ["Hello", "<END>"]
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    steps = body["unite"]["choices"][0]["steps"]
    assert [s["end"] for s in steps] == [False, False, True] and all("union" not in s for s in steps)
    assert body["unite"]["members"] == server.ensemble.names
    Completion.model_validate(body)
    plain = serving.completions.response([output()], CompletionRequest(model=server.model, prompt="x")).model_dump()
    assert "unite" not in plain and plain["choices"][0]["logprobs"] is None


def test_chat_body(serving, server):
    req = ChatCompletionRequest(model=server.model, messages=[{"role": "user", "content": "hi"}], logprobs=True)
    body = serving.chats.response(output(), req, 0).model_dump()
    assert "unite" not in body
    (choice,) = body["choices"]
    assert choice["message"] == {"role": "assistant", "content": TEXT}
    assert [t["token"] for t in choice["logprobs"]["content"]] == ["Hello", "<END>"]
    assert all(t["top_logprobs"] == [] for t in choice["logprobs"]["content"])
    assert body["usage"]["completion_tokens"] == 2
    ChatCompletion.model_validate(body)


def stream(serving: OpenAIServing, req, *, chat: bool, n_logprobs: int | None) -> list[dict]:
    """The events of a job fed as the worker feeds one: a chunk per text step, then the output."""

    async def run() -> list[str]:
        job = Job(prompt="x", chat=chat, config=GenerationConfig(), loop=asyncio.get_running_loop())
        for piece, s in (("Hello", STEPS[0]), ("<END>", STEPS[1])):
            job.events.put_nowait(ChunkEvent(StreamChunk(piece, s)))
        job.events.put_nowait(ChunkEvent(StreamChunk("", STEPS[-1], output())))
        job.events.put_nowait(DoneEvent())
        bodies = serving.chats if chat else serving.completions
        return [e async for e in bodies.event_stream(job, req, n_logprobs)]

    events = asyncio.run(run())
    assert all(e.startswith("data: ") and e.endswith("\n\n") for e in events)
    assert events[-1] == "data: [DONE]\n\n"
    return [json.loads(e[6:]) for e in events[:-1]]


def test_completion_stream(serving, server):
    req = CompletionRequest(
        model=server.model, prompt="x", stream=True, stream_options={"include_usage": True}, unite={"explain": True}
    )
    msgs = stream(serving, req, chat=False, n_logprobs=1)
    *chunks, usage = msgs
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 2 and "unite" not in usage
    assert "".join(c["choices"][0]["text"] for c in chunks) == TEXT
    assert [t for c in chunks for t in c["choices"][0]["logprobs"]["tokens"]] == ["Hello", "<END>"]
    assert [s["end"] for c in chunks for s in c["unite"]["steps"]] == [False, False, True]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, "stop"]
    assert "members" in chunks[-1]["unite"] and "members" not in chunks[0]["unite"]
    assert "usage" not in chunks[0]
    for m in (chunks[-1], usage):  # the client builds the others without validation (its type says finish_reason is set)
        Completion.model_validate(m)


def test_chat_stream(serving, server):
    req = ChatCompletionRequest(model=server.model, messages=[{"role": "user", "content": "hi"}], stream=True, logprobs=True)
    role, *chunks = stream(serving, req, chat=True, n_logprobs=0)
    assert role["choices"] == [
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
    ]
    assert [c["choices"][0]["delta"] for c in chunks] == [{"content": "Hello"}, {"content": "<END>"}, {}]
    assert [t["token"] for c in chunks for t in c["choices"][0]["logprobs"]["content"]] == ["Hello", "<END>"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop" and all("unite" not in c for c in chunks)
    for m in (role, *chunks):
        ChatCompletionChunk.model_validate(m)
