"""One builder for every entry point (issue 27 item 2; issue 28 items 2 and 10).

The rules (fast, no model: everything model-free is checked before anything loads) and then
the real entry points on the small models: ``unite generate``/``serve`` (through the CLI's
flag parser), ``unite eval``, ``unite select`` and lm-eval's ``unite`` model, each given the
same config, build an ensemble with the same settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tests.test_eval_tasks import write_task
from unite_llm.builder import build_ensemble, plan_ensemble
from unite_llm.cli import app
from unite_llm.cli._app import build_ensemble as cli_build_ensemble
from unite_llm.cli._app import plan_from_flags
from unite_llm.config import EnsembleConfig
from unite_llm.errors import InvalidConfigError
from unite_llm.models import DEFAULT_SETTINGS
from unite_llm.prompts import chat_template_source

SMOL, GEMMA = "smollm2-135m-instruct", "gemma3-270m"
MISSING = "/nonexistent/no-such-model.gguf"  # loading it would fail: a check that passes first ran without a model
GATE = {"threshold": 0.3, "signal": "margin"}


def write_config(folder: Path, **over) -> Path:
    doc = {
        "members": [SMOL, GEMMA],
        "weights": [0.7, 0.3],
        "k": 5,
        "chat_templates": {GEMMA: "gemma"},
        "gate": GATE,
        "weighting": ["floor=0.6"],
        "member_options": {"n_ctx": 512, "n_threads": 1},
        **over,
    }
    path = folder / "ens.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


# -- the rules, without a model --------------------------------------------------------------------


def test_nothing_given_is_the_default_ensemble_with_its_gate():
    plan = plan_ensemble()
    assert plan.specs == EnsembleConfig.default().members
    assert plan.ensemble["gate"] == DEFAULT_SETTINGS["gate"] and plan.loading["gate"] == DEFAULT_SETTINGS["gate"]


def test_members_alone_have_no_gate_and_off_clears_one(tmp_path: Path):
    assert plan_ensemble(members=[SMOL, GEMMA]).ensemble["gate"] is None
    assert plan_ensemble(gate=False).ensemble["gate"] is None  # --gate off on the default
    cfg = write_config(tmp_path)
    plan = plan_ensemble(cfg, gate=False, weighting=False)
    assert plan.ensemble["gate"] is None and plan.ensemble["weighting"] is None and plan.loading["gate"] is None
    flags = plan_from_flags(None, str(cfg), gate="off", weighting="off")
    assert flags.ensemble["gate"] is None and flags.ensemble["weighting"] is None


def test_the_weights_rule(tmp_path: Path):
    cfg = write_config(tmp_path)
    assert plan_ensemble(cfg).ensemble["weights"] == [0.7, 0.3]
    assert plan_ensemble(cfg, members=[SMOL, GEMMA]).ensemble["weights"] == [0.7, 0.3]  # the file's own list
    assert plan_ensemble(cfg, members=[GEMMA, SMOL]).ensemble["weights"] is None  # other members: equal
    assert plan_ensemble(cfg, members=[GEMMA, SMOL], weights=[1, 3]).ensemble["weights"] == [1, 3]


@pytest.mark.parametrize(
    ("over", "needle"),
    [
        ({"weights": [1.0, 2.0, 3.0]}, "3 weights given for 2 members"),
        ({"k": 0, "method": "unite"}, "k"),
        ({"method": "bogus"}, "bogus"),
        ({"primary": "nobody"}, "primary 'nobody' is not a member"),
        ({"gate": {"threshold": -1}}, "gate threshold"),
        ({"weighting": ["floor=7"]}, "floor"),
    ],
)
def test_model_free_settings_are_refused_before_anything_loads(over, needle):
    with pytest.raises(InvalidConfigError, match=needle):
        build_ensemble(members=[MISSING, "/nonexistent/other.gguf"], **over)


def test_a_chat_template_for_no_member_is_refused_before_loading():
    with pytest.raises(InvalidConfigError, match="'nobody' is not a member"):
        build_ensemble(members=[MISSING], chat_templates={"nobody": "gemma"})


@pytest.mark.parametrize(
    ("block", "needle"),
    [
        ({"temperature": "hot"}, "generation.temperature: temperature must be a number"),
        ({"max_new_tokens": -1}, "generation.max_new_tokens: max_new_tokens must be >= 0"),
        ({"stop": [3]}, "generation.stop: stop must be a string or a list of strings"),
        ({"bogus": 1}, "generation.bogus is not a generation setting"),
        ({"top_p": 0}, "generation.top_p"),
        ("fast", "generation"),
    ],
)
def test_a_bad_generation_block_is_one_line_naming_the_file_and_key(tmp_path: Path, block, needle):
    path = write_config(tmp_path, generation=block)
    with pytest.raises(InvalidConfigError) as err:
        EnsembleConfig.read(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and needle in message
    result = CliRunner().invoke(app, ["generate", "--config", str(path), "hi"])  # before any model loads
    assert result.exit_code == 2 and needle in result.output


def test_the_generation_block_gives_defaults_that_flags_override(tmp_path: Path):
    cfg = EnsembleConfig.read(write_config(tmp_path, generation={"max_new_tokens": 4, "stop": ["\n"], "temperature": 0.5}))
    gen = cfg.generation_config()
    assert (gen.max_new_tokens, tuple(gen.stop), gen.temperature) == (4, ("\n",), 0.5)
    gen = cfg.generation_config(max_new_tokens=9, temperature=None)
    assert (gen.max_new_tokens, gen.temperature) == (9, 0.5)


# -- the entry points, on the small models ----------------------------------------------------------


def _settings(ens) -> dict:
    return {
        "names": ens.names,
        "k": ens.method.k if hasattr(ens.method, "k") else None,
        "weights": [round(float(w), 6) for w in ens.weights],
        "gate": (ens.gate.threshold, ens.gate.signal) if ens.gate is not None else None,
        "weighting": [r.spec() for r in ens.weighting],
        "templates": [m.chat_template for m in ens.members],
        "n_ctx": [m.n_ctx for m in ens.members],
    }


@pytest.mark.slow  # loads a model itself
def test_every_entry_point_builds_the_same_ensemble_from_one_config(tmp_path: Path):
    from unite_llm.lm_eval_model import UniteLM

    path = write_config(tmp_path)
    ens, _plan = cli_build_ensemble(None, str(path))  # unite generate / serve
    with ens:
        reference = _settings(ens)
    assert reference["gate"] == (0.3, "margin") and reference["weighting"] == ["floor=0.6"]
    assert reference["templates"][1] == chat_template_source("gemma") and reference["weights"] == [0.7, 0.3]
    lm = UniteLM(config=str(path))  # lm-eval's unite model
    try:
        assert _settings(lm.ensemble) == reference
    finally:
        lm.close()
    with build_ensemble(path) as direct:  # Python
        assert _settings(direct) == reference


@pytest.mark.slow  # loads a model itself
def test_eval_and_select_use_the_configs_settings(tmp_path: Path):
    task = write_task(tmp_path, rows=[{"country": "France", "capital": "Paris"}])
    path = write_config(tmp_path, generation={"max_new_tokens": 2})
    out = tmp_path / "eval"
    result = CliRunner().invoke(
        app, ["eval", "--task", str(task), "--config", str(path), "--out", str(out), "--no-progress", "--method", "unite"]
    )
    assert result.exit_code == 0, result.output
    (meta,) = (out / "capitals").glob("unite*.meta.json")
    stored = json.loads(meta.read_text())
    assert stored["gate"] == GATE and stored["weighting"] == ["floor=0.6"] and stored["k"] == 5
    assert stored["weights"] == [0.7, 0.3]

    from unite_llm.select import run_selection

    rep = run_selection([SMOL, GEMMA], str(task), limit=1, out=tmp_path / "sel", progress=False, verify=True, config=path)
    written = rep.config
    assert written.gate == GATE and written.weighting == ["floor=0.6"] and written.k == 5
    assert written.member_options == {"n_ctx": 512, "n_threads": 1}
    assert all(key in written.members for key in written.chat_templates)
    if len(written.members) > 1:  # the selected ensemble ran with the config's gate
        (meta,) = (tmp_path / "sel" / "capitals").glob("unite*gate*.meta.json")
        assert json.loads(meta.read_text())["gate"] == GATE


@pytest.mark.slow  # loads a model itself
def test_generate_applies_the_generation_block_and_flags_override_it(tmp_path: Path):
    path = write_config(tmp_path, members=[SMOL], weights=None, chat_templates={}, gate=None, weighting=[])
    path.write_text(path.read_text() + "generation: {max_new_tokens: 2, ignore_eos: true}\n", encoding="utf-8")
    runner = CliRunner()
    out = json.loads(runner.invoke(app, ["generate", "--config", str(path), "--json", "Hello"]).stdout)
    assert len(out["steps"]) == 2
    out = json.loads(runner.invoke(app, ["generate", "--config", str(path), "--json", "-n", "3", "Hello"]).stdout)
    assert len(out["steps"]) == 3


@pytest.mark.slow  # loads a model itself
def test_lm_eval_batch_size_in_model_args_and_from_lm_eval():
    from lm_eval.api.registry import get_model

    import unite_llm.lm_eval_model  # noqa: F401  (registers "unite")

    cls = get_model("unite")
    lm_eval_options = {"batch_size": 1, "max_batch_size": None, "device": None}  # what lm-eval always passes
    lm = cls.create_from_arg_string(f"members={SMOL},n_ctx=256,n_threads=1,batch_size=2", lm_eval_options)
    try:
        assert lm.batch_size == 2 and lm.ensemble.members[0].max_rows == 2
    finally:
        lm.close()
    lm = cls.create_from_arg_string(f"members={SMOL},n_ctx=256,n_threads=1", {**lm_eval_options, "batch_size": "3"})
    try:
        assert lm.batch_size == 3
    finally:
        lm.close()
    lm = cls.create_from_arg_obj({"members": SMOL, "n_ctx": 256, "n_threads": 1, "batch_size": 2}, lm_eval_options)
    try:
        assert lm.batch_size == 2
    finally:
        lm.close()


@pytest.mark.slow  # loads a model itself
def test_lm_eval_gate_and_weighting_in_model_args(tmp_path):
    """``gate=`` and ``weighting=`` as ``--gate``/``--weighting`` read them; ``off`` clears a config's."""
    from lm_eval.api.registry import get_model

    import unite_llm.lm_eval_model  # noqa: F401  (registers "unite")

    cls = get_model("unite")
    opts = {"batch_size": 1, "max_batch_size": None, "device": None}
    lm = cls.create_from_arg_string(
        f"members={SMOL}+{GEMMA},n_ctx=256,n_threads=1,gate=margin=0.1,weighting=entropy+floor=0.75", opts
    )
    try:
        assert lm.ensemble.gate.signal == "margin" and lm.ensemble.gate.threshold == 0.1
        assert [type(r).__name__ for r in lm.ensemble.weighting] == ["EntropyWeights", "PrimaryFloor"]
    finally:
        lm.close()
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"members": [SMOL, GEMMA], "gate": 0.3, "weighting": ["floor=0.6"]}))
    lm = cls.create_from_arg_string(f"config={path},n_ctx=256,n_threads=1,gate=off,weighting=off", opts)
    try:
        assert lm.ensemble.gate is None and not lm.ensemble.weighting
    finally:
        lm.close()
    lm = cls.create_from_arg_string(f"members={SMOL}+{GEMMA},n_ctx=256,n_threads=1,gate=0.25", opts)
    try:
        assert lm.ensemble.gate.threshold == 0.25
    finally:
        lm.close()
    with pytest.raises(InvalidConfigError, match="gate"):
        cls.create_from_arg_string(f"members={SMOL},gate=loud", opts)


def test_serve_applies_the_generation_block_where_a_request_sets_nothing():
    import inspect

    from tests.fakes import FakeMember
    from unite_llm.cli.serve import serve
    from unite_llm.defaults import DEFAULT_MAX_BATCH
    from unite_llm.engine import Ensemble
    from unite_llm.server import create_app
    from unite_llm.server.protocol import CompletionRequest

    assert inspect.signature(create_app).parameters["max_batch"].default == DEFAULT_MAX_BATCH
    assert inspect.signature(serve).parameters["max_batch"].default == DEFAULT_MAX_BATCH  # one default for both
    api = create_app(Ensemble([FakeMember("left")]), generation_defaults={"stop": ["\n"], "temperature": 0.0, "seed": 3})
    serving = api.state.serving
    gen = serving.gen_config(CompletionRequest(model="m", prompt="hi"), 5)
    assert (tuple(gen.stop), gen.temperature, gen.seed) == (("\n",), 0.0, 3)
    gen = serving.gen_config(CompletionRequest(model="m", prompt="hi", temperature=0.7, stop="x"), 5)
    assert (tuple(gen.stop), gen.temperature) == (("x",), 0.7)  # what the request sends wins


@pytest.mark.slow  # loads a model itself
def test_the_python_evaluate_loads_through_the_builder(tmp_path: Path):
    from unite_llm.eval import evaluate

    task = write_task(tmp_path, rows=[{"country": "France", "capital": "Paris"}])
    summary = evaluate(
        [str(task)], [SMOL], methods=["single"], member_options={"n_ctx": 256, "n_threads": 1}, out=tmp_path / "o", progress=False
    )
    assert summary["tasks"]["capitals"]["systems"][SMOL]["n"] == 1
    with pytest.raises(InvalidConfigError, match="3 weights given for 1 members"):  # before loading
        evaluate([str(task)], [MISSING], weights=[1, 2, 3], out=tmp_path / "o", progress=False)
