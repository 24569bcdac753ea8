"""Every bad request gets OpenAI's error schema, the right status, no traceback, and the
server keeps serving afterwards."""

from __future__ import annotations

import httpx
import openai
import pytest
from openai import OpenAI


@pytest.fixture(scope="module")
def http(server) -> httpx.Client:
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


def ok_body(server, **over) -> dict:
    return {"model": server.model, "prompt": "Hello", "max_tokens": 2, "temperature": 0} | over


def check_error(resp: httpx.Response, status: int, *, code: str | None = None, param: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    err = body["error"]
    assert err["message"] and isinstance(err["type"], str)
    assert "Traceback" not in resp.text and 'File "' not in resp.text
    if code is not None:
        assert err["code"] == code, err
    if param is not None:
        assert err["param"] == param, err
    return err


LONG = "word " * 3000  # > 2048 tokens for both members


@pytest.mark.parametrize(
    ("path", "body", "status", "code", "param"),
    [
        ("/v1/completions", {"model": "gpt-4"}, 404, "model_not_found", "model"),
        (
            "/v1/chat/completions",
            {"model": "nope", "prompt": None, "messages": [{"role": "user", "content": "hi"}]},
            404,
            None,
            "model",
        ),
        ("/v1/completions", {"n": 2}, 400, None, "n"),
        ("/v1/chat/completions", {"n": 3, "prompt": None, "messages": [{"role": "user", "content": "hi"}]}, 400, None, "n"),
        ("/v1/completions", {"prompt": LONG}, 400, "context_length_exceeded", "prompt"),
        (
            "/v1/completions",
            {"max_tokens": 4000, "prompt": "Hello there, how are you?"},
            400,
            "context_length_exceeded",
            "max_tokens",
        ),
        (
            "/v1/chat/completions",
            {"prompt": None, "messages": [{"role": "user", "content": LONG}]},
            400,
            "context_length_exceeded",
            None,
        ),
        ("/v1/completions", {"prompt": [1, 2, 10**9]}, 400, None, "prompt"),
        ("/v1/completions", {"prompt": [[]]}, 400, None, "prompt"),
        ("/v1/completions", {"prompt": []}, 400, None, "prompt"),
        ("/v1/completions", {"echo": True, "stream": True}, 400, None, "echo"),
        ("/v1/completions", {"logit_bias": {"50256": -100}}, 400, None, "logit_bias"),
        ("/v1/completions", {"presence_penalty": 0.5}, 400, None, "presence_penalty"),
        ("/v1/completions", {"stop": [""]}, 400, None, "stop"),
        ("/v1/completions", {"stream": True, "prompt": ["a", "b"]}, 400, None, "prompt"),
        ("/v1/completions", {"stream_options": {"include_usage": True}}, 400, None, "stream_options"),
        ("/v1/completions", {"prompt": "bad \ud800 surrogate"}, 400, None, None),
        (
            "/v1/chat/completions",
            {"prompt": None, "messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
            400,
            None,
            None,
        ),
        ("/v1/completions", {"temperature": 5}, 422, None, "temperature"),
        ("/v1/completions", {"top_p": 0}, 422, None, "top_p"),
        ("/v1/completions", {"max_tokens": -1}, 422, None, "max_tokens"),
        ("/v1/completions", {"prompt": None}, 422, None, "prompt"),
        ("/v1/completions", {"model": None}, 422, None, "model"),
        ("/v1/chat/completions", {"prompt": None, "messages": []}, 422, None, "messages"),
        ("/v1/chat/completions", {"prompt": None, "messages": [{"role": "robot", "content": "hi"}]}, 422, None, None),
        ("/v1/completions", {"unite": {"explain": "very"}}, 422, None, None),
    ],
)
def test_bad_request(server, http, path, body, status, code, param):
    payload = {k: v for k, v in ok_body(server, **body).items() if v is not None}
    if path.endswith("chat/completions"):
        payload.pop("prompt", None)
    # httpx refuses to encode a lone surrogate, so the body is serialised by hand (as JSON allows).
    import json

    raw = json.dumps(payload, ensure_ascii=True).encode()
    resp = http.post(path, content=raw, headers={"content-type": "application/json"})
    check_error(resp, status, code=code, param=param)


def test_malformed_json_is_400(http):
    resp = http.post("/v1/completions", content=b'{"model": "x", "prompt": ', headers={"content-type": "application/json"})
    check_error(resp, 400, code="invalid_json")


def test_body_not_an_object_is_422(http):
    check_error(http.post("/v1/completions", json=[1, 2]), 422)


def test_unknown_route_and_method(http):
    check_error(http.get("/v1/nothing"), 404)
    check_error(http.get("/v1/completions"), 405)
    check_error(http.get("/v1/models/other-model"), 404, code="model_not_found")


def test_openai_client_raises_typed_errors(server):
    client = OpenAI(base_url=server.v1, api_key="unused", max_retries=0, timeout=60)
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="gpt-4", prompt="hi", max_tokens=1)
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=server.model, prompt="hi", max_tokens=1, n=2)
    assert e.value.param == "n"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=server.model, messages=[{"role": "user", "content": LONG}], max_tokens=1)
    assert e.value.code == "context_length_exceeded"
    with pytest.raises(openai.UnprocessableEntityError):
        client.completions.create(model=server.model, prompt="hi", max_tokens=1, temperature=9)


def test_server_keeps_serving_after_errors(server, http):
    for _ in range(3):
        http.post("/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
        http.post("/v1/completions", json=ok_body(server, n=5))
    resp = http.post("/v1/completions", json=ok_body(server))
    assert resp.status_code == 200 and resp.json()["choices"][0]["text"]
    sched = server.wait_idle()
    assert sched["failed"] == 0  # bad requests are refused before they reach the worker


def test_chat_with_a_base_member_is_refused_like_the_cli(smol, gemma, serve_ensemble):
    # The base Gemma has no chat template: the chat endpoint refuses it with the CLI's
    # message (400, OpenAI's schema), while raw completions from the same server work.
    from unite_llm.engine import Ensemble

    with (
        serve_ensemble(Ensemble([smol, gemma], prefix_cache=False), "base-pair") as srv,
        httpx.Client(base_url=srv.url, timeout=120) as c,
    ):
        msgs = [{"role": "user", "content": "hi"}]
        for stream in (False, True):
            r = c.post("/v1/chat/completions", json={"model": srv.model, "messages": msgs, "max_tokens": 2, "stream": stream})
            err = check_error(r, 400, param="messages")
            assert "gemma3-270m has no chat template: it is a base" in err["message"]
        r = c.post("/v1/completions", json={"model": srv.model, "prompt": "Hello", "max_tokens": 2, "temperature": 0})
        assert r.status_code == 200 and r.json()["choices"][0]["text"]
