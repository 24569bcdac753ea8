"""Server cases of the adversarial pass (issue 15): negative seeds, oversized bodies, HEAD."""

from __future__ import annotations

import json

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
