"""Property test over the request schema (issue 15): random valid and invalid payloads
to the real server on loopback never get a 500 or a traceback.

Every payload that could run keeps ``max_tokens`` (or ``max_completion_tokens``) at 2 or
less, so the bounded examples stay cheap on the real models.  An error is always OpenAI's
schema; a 200 stream never carries an error event.
"""

from __future__ import annotations

import json
import math

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)

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
temperatures = st.sampled_from([0, 0.0, 0.7, 1.0, 2.0, -0.1, 2.5, math.nan, math.inf, "hot", None, True])
seeds = st.sampled_from([None, 0, 7, -1, -2, 2**32, 2**64 + 5, -(2**70), 1.5, "42", True, [1]])
stops = st.sampled_from([None, "\n", "", ["\n"], [""], ["a"] * 10, 5, [1, 2], {"x": 1}])
texts = st.text(max_size=40) | st.sampled_from(["Hello", "The capital of France is", "\x00", "\ud800", "é" * 30])
prompts = texts | st.lists(texts, min_size=0, max_size=2) | st.lists(st.integers(-5, 70000), max_size=3) | json_values
roles = st.sampled_from(["user", "system", "assistant", "developer", "tool", "", 3])
messages = st.lists(
    st.fixed_dictionaries(
        {"role": roles},
        optional={"content": texts | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": texts})) | json_values},
    ),
    max_size=3,
)
options = {
    "temperature": temperatures,
    "top_p": st.sampled_from([1.0, 0.5, 0.0, -1, 1.5, math.nan, "x"]),
    "seed": seeds,
    "stop": stops,
    "stream": st.sampled_from([True, False, "yes", None, 1]),
    "stream_options": st.sampled_from([None, {"include_usage": True}, {"include_usage": "x"}, [], 3]),
    "n": st.sampled_from([1, 2, 0, -1, "1"]),
    "logprobs": st.sampled_from([None, 0, 2, 21, -1, True, False, "x"]),
    "top_logprobs": st.sampled_from([None, 0, 3, 21, -1]),
    "unite": st.sampled_from([None, {"explain": True}, {"union": True}, {"bogus": 1}, "x"]),
    "ignore_eos": st.sampled_from([False, True, "x"]),
    "presence_penalty": st.sampled_from([0, 0.5, 3, "x"]),
    "logit_bias": st.sampled_from([None, {}, {"1": 5}, {"x": "y"}]),
    "echo": st.sampled_from([False, True]),
    "best_of": st.sampled_from([None, 1, 2, 0]),
}


def completion_bodies(model: str) -> st.SearchStrategy:
    return st.fixed_dictionaries(
        {"model": st.sampled_from([model, "gpt-4", "", 5]), "prompt": prompts, "max_tokens": budgets}, optional=options
    )


def chat_bodies(model: str) -> st.SearchStrategy:
    return st.fixed_dictionaries(
        {"model": st.sampled_from([model, "nope"]), "messages": messages | json_values, "max_tokens": budgets},
        optional=options | {"max_completion_tokens": budgets},
    )


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
    body = data.draw(completion_bodies(server.model) | json_values)
    if isinstance(body, dict) and body.get("model") == server.model and "max_tokens" not in body:
        body["max_tokens"] = 1
    check(post(http, "/v1/completions", body))


@FUZZ
@given(data=st.data())
def test_chat_completions_never_500(http, server, data):
    body = data.draw(chat_bodies(server.model) | json_values)
    check(post(http, "/v1/chat/completions", body))


@FUZZ
@given(raw=st.binary(max_size=200) | st.text(max_size=100).map(str.encode))
def test_raw_bodies_never_500(http, raw):
    for path in ("/v1/completions", "/v1/chat/completions"):
        check(http.post(path, content=raw, headers={"content-type": "application/json"}))
