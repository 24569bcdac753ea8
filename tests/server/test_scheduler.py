"""The server's worker on fake members (no model, no HTTP): the one runner feeds the jobs to the
engine's decode loop, one at a time or batched, and each answer is what ``generate`` gives."""

from __future__ import annotations

import asyncio

import pytest
from tests.fakes import FakeMember

from unite_llm.engine import Ensemble, GenerationOutput
from unite_llm.errors import UniteError
from unite_llm.sampling import GenerationConfig
from unite_llm.server.scheduler import ChunkEvent, DoneEvent, EngineRunner, ErrorEvent, Job, Scheduler

PROMPTS = ["the cat", "a dog sat", "on the mat", "the", "cat cat cat"]
CONFIG = GenerationConfig(max_new_tokens=6)


async def _events(job: Job) -> tuple[str, GenerationOutput | None, BaseException | None]:
    text, output = "", None
    while True:
        event = await asyncio.wait_for(job.events.get(), 30)
        if isinstance(event, ChunkEvent):
            text += event.chunk.text
            output = event.chunk.output or output
        elif isinstance(event, DoneEvent):
            return text, output, None
        else:
            assert isinstance(event, ErrorEvent)
            return text, output, event.error


def serve(ens: Ensemble, prompts: list[str], max_batch: int) -> list[tuple[str, GenerationOutput | None, BaseException | None]]:
    async def main() -> list:
        scheduler = Scheduler(EngineRunner(ens, max_batch), max_queue=16)
        scheduler.start()
        try:
            jobs = scheduler.submit_all(prompts, CONFIG, chat=False)
            return list(await asyncio.gather(*(_events(j) for j in jobs)))
        finally:
            scheduler.stop()

    return asyncio.run(main())


@pytest.mark.parametrize("max_batch", [1, 4])
@pytest.mark.parametrize("method", ["unite", "rank"])
def test_each_job_gets_what_generate_gives(method, max_batch):
    ens = Ensemble([FakeMember("left", batch=True), FakeMember("right", batch=True)], method=method)
    want = [ens.generate(p, CONFIG) for p in PROMPTS]
    got = serve(ens, PROMPTS, max_batch)
    for (text, out, err), w in zip(got, want):
        assert err is None
        assert out is not None and out.output_bytes == w.output_bytes and text == w.text
    runner_rows = min(max_batch, ens.max_batch)
    assert EngineRunner(ens, max_batch).max_batch == runner_rows


def test_a_prompt_a_member_refuses_fails_alone():
    ens = Ensemble([FakeMember("left", n_ctx=64, batch=True), FakeMember("right", n_ctx=64, batch=True)])
    prompts = ["the cat", "x" * 200, "on the mat"]
    got = serve(ens, prompts, 4)
    assert isinstance(got[1][2], UniteError) and "context" in str(got[1][2])
    for i in (0, 2):
        assert got[i][2] is None and got[i][1] is not None
        assert got[i][1].output_bytes == ens.generate(prompts[i], CONFIG).output_bytes
