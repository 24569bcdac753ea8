"""Server cases of the adversarial pass (issue 15): negative seeds, oversized bodies, HEAD."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx
import pytest


@pytest.fixture(scope="module")
def http(server) -> httpx.Client:
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


def events(resp: httpx.Response) -> list[dict | str]:
    out: list[dict | str] = []
    for line in resp.text.splitlines():
        if line.startswith("data: "):
            data = line.removeprefix("data: ")
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


@pytest.mark.parametrize("seed", [-1, -2])
def test_negative_seed_is_served(http, server, seed):
    # Chat requests build their GenerationConfig the same way (gen_config); the default
    # pair's Gemma is a base model without a chat template, so completions exercise it.
    body = {"model": server.model, "prompt": "Once upon a time", "max_tokens": 2, "temperature": 0.9, "seed": seed}
    plain = http.post("/v1/completions", json=body)
    assert plain.status_code == 200, plain.text
    streamed = http.post("/v1/completions", json=body | {"stream": True})
    assert streamed.status_code == 200, streamed.text
    evs = events(streamed)
    assert evs[-1] == "[DONE]"
    assert not any(isinstance(e, dict) and "error" in e for e in evs), evs


def test_negative_seed_is_its_unsigned_value(http, server):
    body = {"model": server.model, "prompt": "Once upon a time", "max_tokens": 4, "temperature": 1.0}
    a = http.post("/v1/completions", json=body | {"seed": -2}).json()["choices"][0]["text"]
    b = http.post("/v1/completions", json=body | {"seed": 2**32 - 2}).json()["choices"][0]["text"]
    assert a == b


# -- request body cap ---------------------------------------------------------------------------

CAP = 2 * 1024 * 1024  # the default of create_app / unite serve


def padded(server, size: int) -> bytes:
    """A valid completion request of exactly ``size`` bytes (an unknown field takes the slack)."""
    body = {"model": server.model, "prompt": "Hello", "max_tokens": 1, "temperature": 0, "padding": ""}
    raw = json.dumps(body).encode()
    return json.dumps(body | {"padding": "x" * (size - len(raw))}).encode()


def check_413(resp: httpx.Response) -> None:
    assert resp.status_code == 413, resp.text[:300]
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] == "request_too_large" and "--max-request-bytes" in err["message"]


def test_oversized_body_gets_413_before_it_is_read(http, server):
    big = json.dumps({"model": server.model, "prompt": "word " * 1_000_000, "max_tokens": 1}).encode()  # 5 MB
    t0 = time.perf_counter()
    resp = http.post("/v1/completions", content=big, headers={"content-type": "application/json"})
    check_413(resp)
    assert time.perf_counter() - t0 < 2, "refused without tokenizing"
    assert "5,000,0" in resp.json()["error"]["message"]


def test_body_cap_is_exact(http, server):
    at_cap = http.post("/v1/completions", content=padded(server, CAP), headers={"content-type": "application/json"})
    assert at_cap.status_code == 200, at_cap.text[:300]
    check_413(http.post("/v1/completions", content=padded(server, CAP + 1), headers={"content-type": "application/json"}))


def test_chunked_body_without_length_is_capped(http, server):
    def chunks():
        for _ in range(40):
            yield b" " * 100_000  # 4 MB of JSON whitespace, no Content-Length

    resp = http.post("/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"})
    check_413(resp)
    small = http.post("/v1/completions", content=iter([padded(server, 5000)]), headers={"content-type": "application/json"})
    assert small.status_code == 200, small.text[:300]


def test_bad_max_request_bytes_on_the_cli():
    proc = subprocess.run(
        [sys.executable, "-m", "unite_llm.cli", "serve", "--max-request-bytes", "0"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and "--max-request-bytes must be >= 1" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


# -- HEAD -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/health", "/v1/models", "/v1/models/unite-test", "/", "/static/playground.js"])
def test_head_answers_every_get_route(http, path):
    get = http.get(path)
    head = http.head(path)
    assert get.status_code == head.status_code == 200, head.text
    assert head.content == b""
    assert head.headers["content-type"] == get.headers["content-type"]


def test_head_on_a_post_route_is_405_not_a_crash(http):
    resp = http.head("/v1/completions")
    assert resp.status_code == 405 and resp.content == b""
