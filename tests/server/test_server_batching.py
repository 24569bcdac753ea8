"""Continuous batching in the server (``--max-batch``), on the real models.

Requests join the running batch between steps: one that arrives while others stream starts
streaming at once and can finish before them; a client that goes away leaves the batch
without disturbing the other rows; ``/health`` reports the batch and its tokens/s.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import httpx
import pytest
from tests.server.test_server_concurrency import first_text, wait_for

from unite_llm.engine import Ensemble
from unite_llm.members.llama_cpp import LlamaCppMember

LONG = {"max_tokens": 48, "ignore_eos": True, "temperature": 0, "stream": True}


@pytest.fixture(scope="module")
def batched(serve_ensemble) -> Iterator:
    members = [LlamaCppMember(spec, n_ctx=1024, n_threads=1, n_seq=4) for spec in ("smollm2-135m-instruct", "gemma3-270m")]
    ens = Ensemble(members)
    with serve_ensemble(ens, "unite-batch", max_batch=4, max_queue=8) as srv:
        yield srv
    ens.close()


def stream_text(srv, prompt: str, done: dict, key: str, **over) -> None:
    body = {"model": srv.model, "prompt": prompt} | LONG | over
    with httpx.Client(timeout=300) as c, c.stream("POST", f"{srv.v1}/completions", json=body) as r:
        r.raise_for_status()
        text = "".join(json.loads(line[6:])["choices"][0]["text"] for line in r.iter_lines() if line.startswith("data: {"))
    done[key] = text


@pytest.mark.slow  # loads a model itself
def test_a_request_joins_the_running_batch_and_a_disconnect_leaves_it(batched) -> None:
    srv = batched
    want = srv.generate("1, 2, 3, 4, 5, 6,", max_new_tokens=6).text
    before = srv.wait_idle()
    assert before["max_batch"] == 4
    done: dict[str, str] = {}
    long_a = threading.Thread(target=stream_text, args=(srv, "Tell me a story.", done, "a"))
    long_a.start()
    with httpx.Client(timeout=300) as c:
        body = {"model": srv.model, "prompt": "Once upon a time"} | LONG
        with c.stream("POST", f"{srv.v1}/completions", json=body) as rb:
            lines_b = rb.iter_lines()
            first_text(lines_b)
            sched = wait_for(srv, "A and B run together", lambda s: s["running"] == 2 and s.get("batch_size") == 2)
            # C arrives while A and B stream: it joins between two steps and finishes first.
            short = {"model": srv.model, "prompt": "1, 2, 3, 4, 5, 6,", "max_tokens": 6, "temperature": 0}
            r = httpx.post(f"{srv.v1}/completions", json=short, timeout=120)
            assert r.status_code == 200 and r.json()["choices"][0]["text"] == want
            assert "a" not in done, "C waited for A to finish"
            sched = srv.health()["scheduler"]
            assert sched["running"] == 2 and sched["tokens_per_s"] > 0, sched
            first_text(lines_b)
        # B's client is gone: its row leaves the batch; A goes on to its 48 tokens.
    long_a.join(300)
    after = srv.wait_idle(timeout=60)
    assert after["cancelled"] == before["cancelled"] + 1
    assert after["completed"] == before["completed"] + 2  # A and C
    assert len(srv.ensemble.members[0].tokenize(done["a"].encode())) > 10


@pytest.mark.slow  # loads a model itself
def test_batched_server_answers_concurrent_clients_each_their_own(batched) -> None:
    srv = batched
    prompts = ["1, 2, 3, 4, 5, 6,", "Monday, Tuesday, Wednesday,", "January, February, March, April,", "A B C D E F G"]
    want = [srv.generate(p, max_new_tokens=6).text for p in prompts]
    srv.wait_idle()
    got: dict[str, str] = {}
    threads = [
        threading.Thread(target=stream_text, args=(srv, p, got, p), kwargs={"max_tokens": 6, "ignore_eos": False})
        for p in prompts
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert [got[p] for p in prompts] == want
