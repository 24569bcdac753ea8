"""Members inside Ray actors, on a real local Ray cluster started on loopback.

The default pair runs as two actors and must decode exactly as it does in process,
while only small messages cross the wire.
"""

from __future__ import annotations

import pytest
import ray  # the `distributed` extra, which `make test` installs

from unite_llm.engine import Ensemble
from unite_llm.errors import InvalidConfigError, ModelNotFoundError
from unite_llm.members.ray_member import RayMember, parse_spec
from unite_llm.prompts import chat_template_source

from .tiers import model_fixture

PROMPT = "The capital of France is"


@model_fixture(scope="session")
def ray_cluster():
    from unite_llm.members.ray_member import connect

    assert not ray.is_initialized()
    connect(None)  # a new local cluster on 127.0.0.1
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_pair(ray_cluster):
    ens = Ensemble.load(["ray:smollm2-135m-instruct?n_ctx=2048", "ray:gemma3-270m?n_ctx=2048"])
    yield ens
    ens.close()


def test_parse_spec_reads_per_member_placement():
    assert parse_spec("gemma3-270m") == ("gemma3-270m", {})
    assert parse_spec("/m/x.gguf?num_gpus=1&n_gpu_layers=-1&node=10.0.0.7&num_cpus=0.5") == (
        "/m/x.gguf",
        {"num_gpus": 1, "n_gpu_layers": -1, "node": "10.0.0.7", "num_cpus": 0.5},
    )


def test_local_cluster_is_on_loopback(ray_cluster):
    nodes = [n for n in ray.nodes() if n["Alive"]]
    assert [n["NodeManagerAddress"] for n in nodes] == ["127.0.0.1"]


def test_ray_pair_decodes_exactly_like_the_in_process_pair(ray_pair, smol, gemma):
    # Both start from a cold KV cache, so the shared fixtures' history (other tests) cannot
    # change the last bits of their logits (see members.base.reset_cache).
    local = Ensemble([smol, gemma], parallel=False, prefix_cache=False).generate(PROMPT, max_new_tokens=16)
    ray_pair.prefix_cache = False
    try:
        remote = ray_pair.generate(PROMPT, max_new_tokens=16)
    finally:
        ray_pair.prefix_cache = True
    assert remote.text == local.text and len(remote.steps) == 16
    for a, b in zip(local.steps, remote.steps):
        assert (a.chosen, a.union_size) == (b.chosen, b.union_size)
        assert a.member_probs == pytest.approx(b.member_probs, rel=1e-5)
        assert b.approximated == []
    assert isinstance(ray_pair.members[0], RayMember) and ray_pair.members[0].vocab.pieces == smol.vocab.pieces


def test_ray_pair_chat_matches_and_keeps_the_kv_cache_in_the_actor(ray_pair, smol, gemma, monkeypatch):
    msgs = [{"role": "user", "content": "Name three primary colours."}]
    # The base Gemma has no chat template: force Gemma's on both sides, as --chat-template would.
    assert ray_pair.members[1].chat_template is None
    for m in (gemma, ray_pair.members[1]):
        monkeypatch.setattr(m, "chat_template", chat_template_source("gemma"))
    before = [m.n_evaluated for m in ray_pair.members]
    local = Ensemble([smol, gemma], parallel=False).generate(msgs, chat=True, max_new_tokens=12)
    remote = ray_pair.generate(msgs, chat=True, max_new_tokens=12)
    assert remote.text == local.text
    # The actor evaluated the prompt once and then only the changed suffix per step.
    for m, n0 in zip(ray_pair.members, before):
        evaluated = m.n_evaluated - n0
        assert evaluated <= remote.prompt_tokens[m.name] + 3 * len(remote.steps)


def test_only_small_messages_cross_the_wire(ray_pair):
    for m in ray_pair.members:
        m.wire.__init__()
    out = ray_pair.generate(PROMPT, max_new_tokens=16)
    for m in ray_pair.members:
        per_step = (m.wire.sent + m.wire.received) / len(out.steps)
        # Gemma's full logits would be 1 MiB per step; the step moves a few hundred bytes.
        assert per_step < 4096, (m.name, m.wire)
        assert m.wire.calls <= 4 * (len(out.steps) + 1)


def test_full_logits_still_available_on_request(ray_pair, gemma):
    import numpy as np

    ctx = gemma.tokenize(PROMPT.encode(), add_bos=True)
    remote = np.asarray(ray_pair.members[1].next_logits(ctx))
    local = np.array(gemma.next_logits(ctx))
    assert remote.shape == local.shape == (262144,)
    assert int(remote.argmax()) == int(local.argmax())
    np.testing.assert_allclose(remote, local, rtol=1e-4, atol=1e-3)


def test_stale_remote_logits_raise(ray_pair, smol):
    member = ray_pair.members[0]
    ctx = smol.tokenize(PROMPT.encode(), add_bos=True)
    first = member.next_logits(ctx)
    member.next_logits(ctx + ctx[-1:])
    with pytest.raises(RuntimeError, match="stale"):
        first.at([1, 2])


def test_node_placement_by_address_and_bad_node(ray_cluster):
    with pytest.raises(InvalidConfigError, match="no live Ray node"):
        RayMember("smollm2-135m-instruct?node=10.255.255.1")
    # num_cpus=0: the pair fixture holds both CPUs of the local cluster.
    m = RayMember("smollm2-135m-instruct?node=127.0.0.1&n_ctx=256&num_cpus=0&n_threads=1", placement_timeout_s=120)
    try:
        assert m.node_id == ray.get_runtime_context().get_node_id()
        assert m.tokenize(b"Hello world") == m.tokenize(b"Hello world") != []
    finally:
        m.close()


def test_unknown_model_in_an_actor_is_a_user_error(ray_cluster):
    with pytest.raises(ModelNotFoundError, match="no-such-model"):
        RayMember("no-such-model?num_cpus=0", placement_timeout_s=120)


def test_unplaceable_actor_times_out_with_a_clear_error(ray_cluster):
    with pytest.raises(InvalidConfigError, match="could not place"):
        RayMember("smollm2-135m-instruct?num_gpus=4", placement_timeout_s=3)


def test_primary_mode_through_ray_matches(ray_pair, smol, gemma):
    local = Ensemble([smol, gemma], primary="gemma3-270m", parallel=False).generate(PROMPT, max_new_tokens=10)
    remote = Ensemble(ray_pair.members, primary="gemma3-270m", parallel=False).generate(PROMPT, max_new_tokens=10)
    assert remote.text == local.text


def test_ray_pair_with_prefix_cache_is_history_independent(ray_pair, smol, gemma):
    """The actor is told where a generation starts (with its first step), so reuse across
    requests follows the prompt plan there too: the same text as a cold in-process run."""
    shots = "".join(f"Question: what is {a} plus {b}?\nAnswer: {a + b}\n\n" for a, b in [(2, 3), (10, 7), (6, 6), (40, 2)])
    target = shots + "Question: what is 12 plus 30?\nAnswer:"
    local = Ensemble([smol, gemma], parallel=False, prefix_cache=False).generate(target, max_new_tokens=8).text
    assert ray_pair.prefix_cache
    for before in (shots + "Question: what is 1 plus 1?\nAnswer:", PROMPT, target):
        ray_pair.generate(before, max_new_tokens=4)
        assert ray_pair.generate(target, max_new_tokens=8).text == local
