"""A real server for the server tests: the default pair behind uvicorn on 127.0.0.1.

The server runs in a thread of the test process on a socket bound to port 0 (the OS
picks a free port), so the tests can compare its answers with the same ensemble called
directly.  The members are the session's ``smol`` and a Gemma with a forced chat template
(the PyPI Gemma is a base model); the test thread
calls the ensemble only through :meth:`LiveServer.generate`, which holds the scheduler's
lock, so the test and the worker never run one llama.cpp context at the same time.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from tests.tiers import model_fixture

from unite_llm.engine import Ensemble
from unite_llm.members.llama_cpp import LlamaCppMember
from unite_llm.prompts import chat_template_source
from unite_llm.server import create_app

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
MAX_QUEUE = 3


@dataclass
class LiveServer:
    url: str
    model: str
    ensemble: Ensemble
    app: object

    @property
    def v1(self) -> str:
        return f"{self.url}/v1"

    def generate(self, prompt, **kwargs):
        """``Ensemble.generate`` from the test thread: it waits for the ensemble's turn, so never
        runs at the same time as the worker's batch."""
        return self.ensemble.generate(prompt, **kwargs)

    def health(self) -> dict:
        return httpx.get(f"{self.url}/health", timeout=10).json()

    def wait_idle(self, timeout: float = 30.0) -> dict:
        """Wait until no job runs or waits; returns the scheduler counters."""
        deadline = time.monotonic() + timeout
        while True:
            sched = self.health()["scheduler"]
            if sched["running"] == 0 and sched["waiting"] == 0:
                return sched
            if time.monotonic() > deadline:
                raise AssertionError(f"server still busy after {timeout}s: {sched}")
            time.sleep(0.05)


@contextmanager
def live_server(
    ens: Ensemble, model: str, *, max_batch: int = 1, max_queue: int = MAX_QUEUE, default_max_tokens: int = 32
) -> Iterator[LiveServer]:
    """``ens`` behind uvicorn on a free loopback port, for the duration of the block
    (``max_batch > 1``: continuous batching)."""
    app = create_app(ens, model, max_queue=max_queue, default_max_tokens=default_max_tokens, max_batch=max_batch)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not srv.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    try:
        yield LiveServer(f"http://127.0.0.1:{port}", model, ens, app)
    finally:
        srv.should_exit = True
        thread.join(30)
        sock.close()


@pytest.fixture(scope="session")
def serve_ensemble():
    """``live_server`` for tests that need a server of their own (a context manager)."""
    return live_server


@model_fixture(scope="session")
def gemma_chat() -> LlamaCppMember:
    """A second Gemma-3-270M with Gemma's chat template forced on it (the base model has
    none), as a user would with ``--chat-template gemma3-270m=gemma``: the server's chat
    tests need a pair whose members both accept messages."""
    m = LlamaCppMember("gemma3-270m", n_ctx=2048, n_threads=1)
    m.chat_template = chat_template_source("gemma")
    yield m
    m.close()


@model_fixture(scope="session")
def server(smol, gemma_chat) -> Iterator[LiveServer]:
    # Cold prompt evaluation per request: each answer depends on its prompt alone, so the
    # tests can compare the server's answers with fresh ones (see members.base.reset_cache).
    with live_server(Ensemble([smol, gemma_chat], prefix_cache=False), "unite-test") as srv:
        yield srv


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(autouse=True)
def _leave_server_idle(request):
    """After a test that used the server, wait until its worker is idle again, so that a
    failed test cannot leave a generation running into the next test (or into tests that
    use the same members directly)."""
    yield
    if "server" in request.fixturenames:
        request.getfixturevalue("server").wait_idle(timeout=120)
