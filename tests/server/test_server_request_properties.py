"""Property test over the request schema (issue 15): random valid and invalid payloads
to the real server on loopback never get a 500 or a traceback.

Every payload that could run keeps ``max_tokens`` (or ``max_completion_tokens``) at 2 or
less, so the bounded examples stay cheap on the real models.  An error is always OpenAI's
schema; a 200 stream never carries an error event.  Deterministic: derandomized (hypothesis'
fixed seed per test), 40 examples per test (see also ``test_server_openapi.py``).
"""

from __future__ import annotations

import json
import math

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# Seed and size: derandomized (hypothesis' fixed seed for each test, no example database), 40 examples per test.
FUZZ = settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow], database=None)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)

# Values that are invalid, or valid and cheap: never a budget above 2 tokens.
budgets = st.sampled_from([0, 1, 2, -1, -(2**40), 2**31, 10**9, 1.5, "2", True, [], {}])
texts = st.text(max_size=40) | st.sampled_from(["Hello", "The capital of France is", "\x00", "\ud800", "é" * 30, ""])
prompts = texts | st.lists(texts, min_size=0, max_size=2) | st.lists(st.integers(-5, 70000), max_size=3) | json_values
roles = st.sampled_from(["user", "system", "assistant", "developer", "tool", "", 3])
messages = st.lists(
    st.fixed_dictionaries(
        {"role": roles},
        optional={"content": texts | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": texts})) | json_values},
    ),
    max_size=3,
)
# Each option: values a client may validly send, and values it should not.
GOOD = {
    "temperature": [0, 0.5, 1.0, 2.0],
    "top_p": [1.0, 0.5, 0.01],
    "seed": [None, 0, 7, -1, -2, 2**64 + 5, -(2**70)],
    "stop": [None, "\n", ["\n", "."], " Paris", ["a", "b", "c", "d"]],
    "stream": [False, True],
    "logprobs": [None, 0, 2, 20],
    "unite": [None, {"explain": True}, {"union": True}],
    "ignore_eos": [False, True],
    "echo": [False, True],
    "user": ["someone"],
}
BAD = {
    "temperature": [-0.1, 2.5, math.nan, math.inf, "hot", None, [1]],
    "top_p": [0.0, -1, 1.5, math.nan, "x"],
    "seed": [1.5, "42", [1], 2.0**80],
    "stop": ["", [""], 5, [1, 2], {"x": 1}],
    "stream": ["yes", None, 2],
    "stream_options": [{"include_usage": True}, {"include_usage": "x"}, [], 3],
    "n": [2, 0, -1, "many"],
    "logprobs": [21, -1, "x"],
    "top_logprobs": [3, 21, -1],
    "unite": [{"bogus": 1}, "x"],
    "ignore_eos": ["x", 3],
    "presence_penalty": [0.5, 3, "x"],
    "logit_bias": [{"1": 5}, {"x": "y"}],
    "suffix": ["!"],
    "best_of": [2, 0],
    "max_tokens": [-1, -(2**40), 2**31, 10**9, 1.5, "2", [], {}],
    "max_completion_tokens": [-1, 10**9, "x"],
    "model": ["gpt-4", "", 5, None],
    "prompt": [[], [1, 2], [[1], [2]], None, 5, {"a": 1}],
    "messages": [[], None, "hi", [{"role": "user"}], [{"role": "tool", "content": "x"}], [{"content": "x"}]],
}


@st.composite
def bodies(draw, model: str, chat: bool) -> object:
    """A valid cheap request, the same with one or two bad fields, a request of anything, or any JSON."""
    kind = draw(st.sampled_from(["valid", "one_bad", "many_bad", "json"]))
    if kind == "json":
        return draw(json_values)
    body: dict[str, object] = {"model": model, "max_tokens": draw(st.integers(0, 2))}
    if chat:
        body["messages"] = [{"role": "user", "content": draw(texts)}]
    else:
        body["prompt"] = draw(texts)
    for key in draw(st.lists(st.sampled_from(sorted(GOOD)), max_size=4, unique=True)):
        body[key] = draw(st.sampled_from(GOOD[key]))
    n_bad = {"valid": 0, "one_bad": 1, "many_bad": draw(st.integers(2, 5))}[kind]
    for key in draw(st.lists(st.sampled_from(sorted(BAD)), min_size=n_bad, max_size=n_bad, unique=True)):
        body[key] = draw(st.sampled_from(BAD[key]) | (json_values if kind == "many_bad" else st.nothing()))
    if kind == "many_bad":
        if draw(st.booleans()):
            body["prompt" if not chat else "messages"] = draw(prompts if not chat else messages | json_values)
    if body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
        body["max_tokens"] = 1  # unset would mean the server's default length: keep it cheap
    for key in ("max_tokens", "max_completion_tokens"):
        if isinstance(body.get(key), int) and 2 < body[key] < 10**6:  # would fit a context: keep it cheap
            body[key] = 2
    return body


@pytest.fixture(scope="module")
def http(server) -> httpx.Client:
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


def check(resp: httpx.Response) -> None:
    assert resp.status_code < 500, resp.text[:500]
    assert "Traceback" not in resp.text and 'File "' not in resp.text, resp.text[:500]
    if resp.status_code >= 400:
        err = resp.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["message"], err
    elif resp.headers.get("content-type", "").startswith("text/event-stream"):
        lines = [x.removeprefix("data: ") for x in resp.text.splitlines() if x.startswith("data: ")]
        assert lines and lines[-1] == "[DONE]", resp.text[:500]
        for x in lines[:-1]:
            assert "error" not in json.loads(x), x
    else:
        assert resp.json()["choices"]


def post(http: httpx.Client, path: str, body: object) -> httpx.Response:
    # allow_nan: Python's json (the server's parser) reads NaN/Infinity; a client may send them.
    return http.post(path, content=json.dumps(body, allow_nan=True), headers={"content-type": "application/json"})


@FUZZ
@given(data=st.data())
def test_completions_never_500(http, server, data):
    check(post(http, "/v1/completions", data.draw(bodies(server.model, chat=False))))


@FUZZ
@given(data=st.data())
def test_chat_completions_never_500(http, server, data):
    check(post(http, "/v1/chat/completions", data.draw(bodies(server.model, chat=True))))


@FUZZ
@given(raw=st.binary(max_size=200) | st.text(max_size=100).map(str.encode))
def test_raw_bodies_never_500(http, raw):
    for path in ("/v1/completions", "/v1/chat/completions"):
        check(http.post(path, content=raw, headers={"content-type": "application/json"}))
