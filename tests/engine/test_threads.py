"""Members stepping in parallel threads decode exactly as they do one after another."""

from __future__ import annotations

import threading

import pytest

from unite_llm.engine import Ensemble


def _run(members, parallel: bool, prompt: str = "The capital of France is", n: int = 12):
    ens = Ensemble(members, parallel=parallel)
    out = ens.generate(prompt, max_new_tokens=n)
    pool = ens.engine._pool
    ens.engine._pool and ens.engine._pool.shutdown(wait=True)  # the members are session fixtures: do not close them
    ens.engine._pool = None
    return out, pool


def test_parallel_is_the_default_for_several_members(smol, gemma):
    assert Ensemble([smol, gemma]).parallel
    assert not Ensemble([smol]).parallel
    assert not Ensemble([smol, gemma], parallel=False).parallel


def test_parallel_and_sequential_give_the_same_steps(smol, gemma):
    seq, seq_pool = _run([smol, gemma], parallel=False)
    par, par_pool = _run([smol, gemma], parallel=True)
    assert seq_pool is None and par_pool is not None  # the pool exists only when stepping in parallel
    assert par.text == seq.text and len(par.steps) == 12
    for a, b in zip(seq.steps, par.steps):
        assert (a.chosen, a.union_size) == (b.chosen, b.union_size)
        assert a.member_probs == pytest.approx(b.member_probs, rel=1e-6)


def test_members_really_run_in_different_threads(smol, gemma):
    seen: dict[str, set[str]] = {}

    class Spy:
        def __init__(self, member):
            self.member = member

        def __getattr__(self, name):
            return getattr(self.member, name)

        def next_logits(self, context):
            seen.setdefault(self.member.name, set()).add(threading.current_thread().name)
            return self.member.next_logits(context)

    _run([Spy(smol), Spy(gemma)], parallel=True, n=3)
    threads = set().union(*seen.values())
    assert threading.main_thread().name not in threads
    assert all(name.startswith("unite-member") for name in threads)


def test_an_error_in_one_member_waits_for_the_others_and_propagates(smol, gemma):
    finished = []

    class Broken:
        def __init__(self, member):
            self.member = member

        def __getattr__(self, name):
            return getattr(self.member, name)

        def next_logits(self, context):
            raise RuntimeError("boom")

    class Slow:
        def __init__(self, member):
            self.member = member

        def __getattr__(self, name):
            return getattr(self.member, name)

        def next_logits(self, context):
            out = self.member.next_logits(context)
            finished.append(True)
            return out

    ens = Ensemble([Slow(gemma), Broken(smol)], parallel=True)
    with pytest.raises(RuntimeError, match="boom"):
        ens.generate("Hello", max_new_tokens=2)
    assert finished == [True]
    ens.engine._pool.shutdown(wait=True)


@pytest.mark.slow  # loads a model itself
def test_load_splits_the_cores_between_in_process_members():
    with Ensemble.load(["smollm2-135m-instruct", "gemma3-270m"], n_ctx=512, parallel=True) as ens:
        import os

        want = max(1, (os.cpu_count() or 1) // 2)
        assert [m.llm.n_threads for m in ens.members] == [want, want]
        ens.generate("Hi", max_new_tokens=2)
        assert ens.engine._pool is not None
    assert ens.engine._pool is None  # close() shut the pool down


@pytest.mark.slow  # loads a model itself
def test_cli_parallel_and_sequential_flags_agree():
    import json

    from typer.testing import CliRunner

    from unite_llm.cli import app

    runner = CliRunner()
    outs = []
    for flag in ("--parallel", "--sequential"):
        res = runner.invoke(app, ["generate", flag, "--json", "-n", "4", "--n-ctx", "512", "The capital of France is"])
        assert res.exit_code == 0, res.output
        outs.append(json.loads(res.stdout))
    assert outs[0]["text"] == outs[1]["text"] and len(outs[0]["steps"]) == 4
    assert all(s["approximated"] == [] for s in outs[0]["steps"])


def test_config_file_carries_parallel_and_ray_address(tmp_path):
    from unite_llm.config import EnsembleConfig

    path = EnsembleConfig(members=["smollm2-135m-instruct"], parallel=False, ray_address="auto").write(tmp_path / "e.json")
    kwargs = EnsembleConfig.read(path).ensemble_kwargs()
    assert kwargs["parallel"] is False and kwargs["ray_address"] == "auto"


def test_unreachable_ray_address_fails_fast():
    from unite_llm.errors import InvalidConfigError
    from unite_llm.members.ray_member import _check_reachable

    with pytest.raises(InvalidConfigError, match="cannot reach a Ray cluster"):
        _check_reachable("127.0.0.1:1", timeout_s=2)
