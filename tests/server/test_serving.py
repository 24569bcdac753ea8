"""The serving layer's checks before queueing (issue 28 items 4, 5 and 12), on the real server.

A lone surrogate in ``stop`` (or in ``/tokenize``'s prompt) was a 500 from a
``UnicodeEncodeError`` deep inside; a request with more prompts than ``--max-queue`` got
503 "overloaded" on an idle server (clients retry 503 forever) and cancelled its own rows.
"""

from __future__ import annotations

import json

import httpx
import pytest
from tests.server.conftest import MAX_QUEUE
from tests.server.test_server_errors import check_error

from unite_llm.errors import InvalidInputError


@pytest.fixture(scope="module")
def http(server) -> httpx.Client:
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


def post(http: httpx.Client, path: str, body: dict) -> httpx.Response:
    # json.dumps writes a lone surrogate as the escape "\ud800", as a hostile client would send it.
    return http.post(path, content=json.dumps(body), headers={"content-type": "application/json"})


@pytest.mark.parametrize("stop", ["\ud800", ["ok", "\udcff"]])
def test_a_lone_surrogate_in_stop_is_400_naming_stop(server, http, stop) -> None:
    r = post(http, "/v1/completions", {"model": server.model, "prompt": "Hi", "max_tokens": 1, "stop": stop})
    check_error(r, 400, param="stop")
    messages = [{"role": "user", "content": "Hi"}]
    r = post(http, "/v1/chat/completions", {"model": server.model, "messages": messages, "max_tokens": 1, "stop": stop})
    check_error(r, 400, param="stop")


def test_a_lone_surrogate_in_a_prompt_is_400(server, http) -> None:
    err = check_error(post(http, "/tokenize", {"prompt": "a\ud800b"}), 400)
    assert "prompt" in err["message"] and "UTF-8" in err["message"]
    check_error(post(http, "/v1/completions", {"model": server.model, "prompt": "\ud800", "max_tokens": 1}), 400)
    messages = [{"role": "user", "content": "x\udfff"}]
    check_error(post(http, "/v1/chat/completions", {"model": server.model, "messages": messages, "max_tokens": 1}), 400)


def test_more_prompts_than_the_queue_holds_is_400_naming_the_limit(server, http) -> None:
    before = server.wait_idle()
    prompts = [f"Item {i}:" for i in range(MAX_QUEUE + 1)]
    r = post(http, "/v1/completions", {"model": server.model, "prompt": prompts, "max_tokens": 1})
    err = check_error(r, 400, code="too_many_prompts", param="prompt")
    assert f"at most {MAX_QUEUE}" in err["message"] and "--max-queue" in err["message"]
    assert "retry-after" not in r.headers
    after = server.wait_idle()
    assert (after["cancelled"], after["rejected"], after["completed"]) == (
        before["cancelled"],
        before["rejected"],
        before["completed"],
    )  # nothing was queued, so nothing was cancelled
    ok = post(http, "/v1/completions", {"model": server.model, "prompt": prompts[:MAX_QUEUE], "max_tokens": 1})
    assert ok.status_code == 200 and len(ok.json()["choices"]) == MAX_QUEUE  # as many as it holds: served


@pytest.mark.parametrize(
    ("path", "extra", "param"),
    [
        ("/v1/completions", {"max_tokens": True}, "max_tokens"),
        ("/v1/chat/completions", {"max_tokens": True}, "max_tokens"),
        ("/v1/chat/completions", {"max_completion_tokens": False}, "max_completion_tokens"),
        ("/v1/chat/completions", {"response_format": {"type": "json_object"}}, "response_format"),
        ("/v1/chat/completions", {"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ("/v1/chat/completions", {"tool_choice": "required"}, "tool_choice"),
    ],
)
def test_unsupported_or_mistyped_settings_are_refused_not_ignored(server, http, path, extra, param) -> None:
    body = {"model": server.model, "max_tokens": 1} | extra
    body |= {"prompt": "Hi"} if path == "/v1/completions" else {"messages": [{"role": "user", "content": "Hi"}]}
    r = post(http, path, body)
    assert r.status_code in (400, 422), r.text
    check_error(r, r.status_code, param=param)


def test_text_response_format_is_accepted(server, http) -> None:
    body = {"model": server.model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
    assert post(http, "/v1/chat/completions", body | {"response_format": {"type": "text"}}).status_code == 200


def test_a_token_id_prompt_of_control_tokens_alone_says_so(server, http) -> None:
    """Issue 28 item 13: not "the prompt is empty" for ids that are there but spell nothing."""
    err = check_error(post(http, "/v1/completions", {"model": server.model, "prompt": [1, 2], "max_tokens": 1}), 400)
    assert "control tokens" in err["message"] and err["param"] == "prompt"


def test_chat_content_as_text_parts_matches_the_python_api(server, http) -> None:
    """Issue 28 item 13: OpenAI's list of text parts reads as the joined text in the server and the API alike."""
    parts = [{"type": "text", "text": "The capital of"}, {"type": "text", "text": " France is"}]
    body = {"model": server.model, "messages": [{"role": "user", "content": parts}], "max_tokens": 3, "temperature": 0}
    got = post(http, "/v1/chat/completions", body).json()["choices"][0]["message"]["content"]
    want = server.generate([{"role": "user", "content": parts}], chat=True, max_new_tokens=3).text
    assert got == want
    image = [{"type": "image_url", "image_url": {"url": "http://x"}}]
    check_error(post(http, "/v1/chat/completions", body | {"messages": [{"role": "user", "content": image}]}), 422)
    with pytest.raises(InvalidInputError, match="content must be a string or a list of"):  # and the API alike
        server.generate([{"role": "user", "content": image}], chat=True, max_new_tokens=1)


def test_a_denormal_temperature_is_served_not_a_500(server, http) -> None:
    """Found by the schema fuzz (test_server_openapi.py, a random run of 300 examples): NaN in sampling."""
    body = {"model": server.model, "messages": [{"role": "user", "content": ""}], "temperature": 5e-324, "max_tokens": 2}
    resp = post(http, "/v1/chat/completions", body)
    assert resp.status_code == 200, resp.text
