"""The server against its own OpenAPI schema (issue 28): schemathesis generates requests for
every operation in ``/openapi.json``, both ones that fit the schema and ones that break it
(wrong types, missing fields, values out of range, bodies that are not JSON), and sends them
to a real server on loopback serving the real SmolLM2-135M-Instruct alone.  Every response is
below 500, and every error is OpenAI's ``{"error": {"message", "type", "param", "code"}}``.

Bounded: hypothesis is derandomized (its fixed seed per test, no example database) with
``EXAMPLES`` = 60 examples per operation, half generated from the schema and half against it,
three in four naming the served model (the others any name: a 404), and one valid request per
POST route always among them (what schemathesis generates from that seed still varies between
runs of the whole suite).  A
request that could generate keeps at most ``MAX_TOKENS`` = 2 new tokens (``max_tokens`` or
``max_completion_tokens`` that would fit a context are cut to it; unset, 2 as well), so the
module runs in about a minute here (9 tests, ~65 s on a busy 2-core machine).  A longer,
random hunt by hand: ``UNITE_FUZZ_EXAMPLES=300 UNITE_FUZZ_RANDOM=1`` (300 per operation, ~7
min); one such run found a 500 (temperature 5e-324 made sampling NaN, fixed in
``sampling.choose``, pinned in ``test_serving.py``).
"""

from __future__ import annotations

import collections
import json
import os

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from unite_llm.engine import Ensemble

EXAMPLES = int(os.environ.get("UNITE_FUZZ_EXAMPLES", 60))  # per operation (the env var: a longer hunt by hand)
MAX_TOKENS = 2
MODEL = "smol-fuzz"
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=os.environ.get("UNITE_FUZZ_RANDOM") is None,  # the seed: hypothesis' fixed one for each test
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
_BUDGETS = ("max_tokens", "max_completion_tokens")
# One request per POST route that the handler must serve (200), always among the examples: what
# schemathesis generates varies between runs of the whole suite (seen: 0 to a few 200s of 60),
# so the handlers are reached on every run, and the generated requests test the checks.
VALID = {
    "/v1/completions": {"model": MODEL, "prompt": "Hello", "max_tokens": MAX_TOKENS},
    "/v1/chat/completions": {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": MAX_TOKENS},
    "/tokenize": {"model": MODEL, "prompt": "Hello"},
    "/detokenize": {"model": MODEL, "tokens": [1, 2]},
}


@pytest.fixture(scope="module")
def smol_server(smol, serve_ensemble):
    with serve_ensemble(Ensemble([smol], prefix_cache=False), MODEL, max_queue=4, default_max_tokens=MAX_TOKENS) as srv:
        yield srv


@pytest.fixture(scope="module")
def schema(smol_server):
    return schemathesis.openapi.from_url(f"{smol_server.url}/openapi.json")


@pytest.fixture(scope="module")
def session():
    with requests.Session() as s:
        yield s


def cheap(case, served: bool) -> None:
    """Keep a request that could run a generation to ``MAX_TOKENS`` new tokens; ``served``: name
    the served model (a random name is a 404 before anything else is looked at)."""
    if served and case.path_parameters and "model_id" in case.path_parameters:
        case.path_parameters["model_id"] = MODEL
    body = case.body
    if not isinstance(body, dict):
        return
    if served and isinstance(body.get("model"), str):
        body["model"] = MODEL
    for key in _BUDGETS:
        v = body.get(key)
        if isinstance(v, int) and not isinstance(v, bool) and MAX_TOKENS < v < 10**6:
            body[key] = MAX_TOKENS
    if case.path.endswith("/completions") and not any(k in body for k in _BUDGETS):
        body["max_tokens"] = MAX_TOKENS  # unset: the completions default of 16 tokens


def content_type(resp) -> str:
    value = resp.headers.get("content-type") or resp.headers.get("Content-Type") or ""
    return value[0] if isinstance(value, list) else value  # schemathesis keeps each header as a list


def check(case, resp: requests.Response) -> None:
    shown = f"{case.method} {case.path} body={json.dumps(case.body, default=repr)[:600]}\n-> {resp.status_code} {resp.text[:600]}"
    assert resp.status_code < 500, shown
    assert "Traceback" not in resp.text and 'File "' not in resp.text, shown
    if resp.status_code >= 400:
        err = resp.json()["error"]
        assert isinstance(err, dict) and {"message", "type", "param", "code"} <= set(err), shown
        assert isinstance(err["message"], str) and err["message"] and isinstance(err["type"], str), shown
    elif content_type(resp).startswith("text/event-stream"):
        lines = [x.removeprefix("data: ") for x in resp.text.splitlines() if x.startswith("data: ")]
        assert lines and lines[-1] == "[DONE]", shown
        assert all("error" not in json.loads(x) for x in lines[:-1]), shown


def operations(schema) -> list:
    ops = [result.ok() for result in schema.get_all_operations()]
    return sorted(ops, key=lambda op: (op.path, op.method))


def test_the_schema_lists_every_route(schema) -> None:
    assert {(op.method.upper(), op.path) for op in operations(schema)} >= {
        ("POST", "/v1/completions"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/tokenize"),
        ("POST", "/detokenize"),
        ("GET", "/v1/models"),
        ("GET", "/v1/models/{model_id}"),
        ("GET", "/health"),
        ("GET", "/tokenizer_info"),
    }


@pytest.mark.parametrize(
    "route",
    [
        "POST /v1/completions",
        "POST /v1/chat/completions",
        "POST /tokenize",
        "POST /detokenize",
        "GET /v1/models/{model_id}",
        "GET /v1/models",
        "GET /health",
        "GET /tokenizer_info",
    ],
)
def test_no_request_from_the_schema_gets_a_5xx(schema, smol_server, session, route: str) -> None:
    method, path = route.split()
    (op,) = [o for o in operations(schema) if o.method.upper() == method and o.path == path]
    seen: collections.Counter[int] = collections.Counter()
    said: dict[int, str] = {}  # the first body of each status, to say why the handlers were not reached
    cases = op.as_strategy(GenerationMode.POSITIVE) | op.as_strategy(GenerationMode.NEGATIVE)

    valid = [example(case=op.Case(body=VALID[path]), served=True)] if path in VALID else []

    @FUZZ
    @given(case=cases, served=st.sampled_from([True, True, True, False]))
    def run(case, served: bool) -> None:
        cheap(case, served)
        resp = case.call(base_url=smol_server.url, session=session, timeout=120)
        seen[resp.status_code] += 1
        said.setdefault(resp.status_code, resp.text[:300])
        check(case, resp)

    for mark in valid:
        run = mark(run)
    run()
    smol_server.wait_idle(timeout=60)
    print(f"{route}: {sum(seen.values())} requests, statuses {dict(sorted(seen.items()))}")
    if method == "POST":  # the fuzz reached both the handlers and the checks in front of them
        assert seen[200] and sum(n for code, n in seen.items() if 400 <= code < 500), (seen, said)
