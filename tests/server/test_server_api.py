"""The API through the official ``openai`` client, compared with the ensemble called directly.

Greedy decoding is deterministic, so what the server sends (plain or streamed) must be
exactly what ``Ensemble.generate`` returns for the same prompt and settings.
"""

from __future__ import annotations

import math

import httpx
import pytest
from openai import OpenAI

PROMPT = "The capital of France is"
MESSAGES = [{"role": "user", "content": "Name one primary colour."}]


@pytest.fixture(scope="module")
def client(server) -> OpenAI:
    return OpenAI(base_url=server.v1, api_key="unused", max_retries=0, timeout=120)


def test_health_and_models(server, client):
    h = server.health()
    assert h["status"] == "ok" and h["model"] == "unite-test"
    assert [m["name"] for m in h["members"]] == ["smollm2-135m-instruct", "gemma3-270m"]
    models = client.models.list().data
    assert [m.id for m in models] == ["unite-test"]
    assert client.models.retrieve("unite-test").id == "unite-test"


def test_completion_matches_direct_ensemble(server, client):
    want = server.generate(PROMPT, max_new_tokens=8)
    got = client.completions.create(model=server.model, prompt=PROMPT, max_tokens=8, temperature=0, logprobs=3)
    choice = got.choices[0]
    assert choice.text == want.text and choice.text.strip()
    assert choice.finish_reason == want.finish_reason == "length"
    assert got.usage.completion_tokens == 8
    assert got.usage.prompt_tokens == max(want.prompt_tokens.values())
    lp = choice.logprobs
    assert "".join(lp.tokens) == choice.text
    assert len(lp.token_logprobs) == 8 == len(lp.top_logprobs)
    for step, token, logprob, top in zip(want.steps, lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert token == step.chosen
        assert math.isclose(math.exp(logprob), step.prob, rel_tol=1e-9)
        assert len(top) <= 3 and max(top.values()) == pytest.approx(logprob)  # greedy: the choice is the top one
    assert lp.text_offset[0] == 0 and lp.text_offset[-1] == len(choice.text) - len(lp.tokens[-1])


def test_completion_stream_equals_plain(server, client):
    plain = client.completions.create(model=server.model, prompt=PROMPT, max_tokens=10, temperature=0).choices[0]
    chunks = list(client.completions.create(model=server.model, prompt=PROMPT, max_tokens=10, temperature=0, stream=True))
    assert len(chunks) > 2  # it really streamed, piece by piece
    assert "".join(c.choices[0].text for c in chunks) == plain.text
    assert [c.choices[0].finish_reason for c in chunks][-1] == plain.finish_reason
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1


def test_stream_include_usage_and_explain(server):
    body = {
        "model": server.model,
        "prompt": PROMPT,
        "max_tokens": 5,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "unite": {"explain": True, "union": True},
    }
    events = []
    with httpx.stream("POST", f"{server.v1}/completions", json=body, timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
    assert events[-1] == "[DONE]"
    import json

    msgs = [json.loads(e) for e in events[:-1]]
    assert msgs[-1]["choices"] == [] and msgs[-1]["usage"]["completion_tokens"] == 5
    steps = [s for m in msgs[:-1] for s in m["unite"]["steps"]]
    assert [s["index"] for s in steps] == list(range(5))
    for s in steps:
        assert s["union_size"] == len(s["union"]) >= 1
        assert set(s["member_probs"]) == {"smollm2-135m-instruct", "gemma3-270m"}
        chosen = [c for c in s["union"] if c["text"] == s["chosen"]]
        assert chosen and chosen[0]["prob"] == pytest.approx(s["prob"])
        assert sum(c["prob"] for c in s["union"]) == pytest.approx(1.0, abs=1e-6)
        assert s["end"] is False and all(isinstance(c["end"], bool) for c in s["union"])  # END is flagged, not spelled
    assert msgs[-2]["unite"]["prompt_tokens"]["gemma3-270m"] > 0


def test_chat_plain_and_stream_match_direct(server, client):
    want = server.generate(MESSAGES, chat=True, max_new_tokens=12)
    got = client.chat.completions.create(model=server.model, messages=MESSAGES, max_tokens=12, temperature=0)
    assert got.choices[0].message.role == "assistant"
    assert got.choices[0].message.content == want.text
    assert got.choices[0].finish_reason == want.finish_reason
    chunks = list(
        client.chat.completions.create(model=server.model, messages=MESSAGES, max_tokens=12, temperature=0, stream=True)
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == want.text
    assert chunks[-1].choices[0].finish_reason == want.finish_reason


def test_chat_logprobs_and_unite(server, client):
    got = client.chat.completions.create(
        model=server.model,
        messages=[{"role": "system", "content": "Answer briefly."}, *MESSAGES],
        max_completion_tokens=6,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
        extra_body={"unite": {"explain": True}},
    )
    content = got.choices[0].logprobs.content
    assert "".join(t.token for t in content) == got.choices[0].message.content
    assert all(t.logprob <= 0 and len(t.top_logprobs) <= 2 for t in content)
    assert all(bytes(t.bytes).decode() == t.token for t in content)
    unite = got.model_extra["unite"]
    assert unite["members"] == ["smollm2-135m-instruct", "gemma3-270m"]
    steps = unite["choices"][0]["steps"]
    assert len([s for s in steps if not s["end"]]) == len(content)
    assert all("union" not in s for s in steps)  # explain without union: sizes and member probabilities only


def test_stop_and_max_tokens(server, client):
    want = server.generate(PROMPT, max_new_tokens=20, stop=["."])
    got = client.completions.create(model=server.model, prompt=PROMPT, max_tokens=20, temperature=0, stop=".").choices[0]
    assert got.text == want.text and "." not in got.text
    assert got.finish_reason == "stop"
    short = client.completions.create(model=server.model, prompt=PROMPT, max_tokens=1, temperature=0)
    assert short.usage.completion_tokens == 1


def test_seeded_sampling_is_reproducible(server, client):
    kw = {"model": server.model, "prompt": "Once upon a time", "max_tokens": 8, "temperature": 1.0, "top_p": 0.95}
    a = client.completions.create(seed=7, **kw).choices[0].text
    b = client.completions.create(seed=7, **kw).choices[0].text
    want = server.generate("Once upon a time", max_new_tokens=8, temperature=1.0, top_p=0.95, seed=7).text
    assert a == b == want


def test_list_of_prompts(server, client):
    prompts = [PROMPT, "2 + 2 ="]
    got = client.completions.create(model=server.model, prompt=prompts, max_tokens=4, temperature=0)
    assert [c.index for c in got.choices] == [0, 1]
    for p, c in zip(prompts, got.choices):
        assert c.text == server.generate(p, max_new_tokens=4).text
    assert got.usage.completion_tokens == 8


def test_playground_assets_served(server):
    page = httpx.get(server.url + "/", timeout=10)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "/static/playground.js" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # everything is served locally, no CDN
    for asset in ("playground.js", "playground.css"):
        assert httpx.get(f"{server.url}/static/{asset}", timeout=10).status_code == 200
