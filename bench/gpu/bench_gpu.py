"""The GPU path, measured in one run: members alone, the ensemble step, batches, memory.

    bash build/gpu-bench/run.sh --out gpu.json                              # on the GPU machine
    python bench/gpu/bench_gpu.py --device cpu --tiny --out /tmp/tiny.json  # the CPU check (tests)

Runs from the folder ``bench/gpu/prepare.py`` builds (``--folder``; default: the folder this
script sits in when it holds a ``manifest.json``, else ``build/gpu-bench``).  Each member is a
transformers ``AutoModelForCausalLM.from_config`` of the real architecture (Qwen2.5-Coder-1.5B and
0.5B, Gemma-3-270M, SmolLM2-135M, configs read from their GGUFs) with seeded RANDOM weights, in
bfloat16 on CUDA, wrapped in the repository's own ``TransformersMember`` with the real tokenizer and
vocabulary; ``--weights ALIAS=DIR`` loads real weights from a transformers folder instead.  Random
weights give representative speed for every part of the step (forward passes of the real sizes, the
real vocabularies, the real byte-level alignment), not representative text.

Measured side by side, greedy, ``ignore_eos`` (every row runs every step):

* each member alone, ms/token: our member's ``next_logits`` (the host copy ``generate()`` uses at
  batch 1), its ``next_logits_batch`` (scores left on the device), a raw forward with a
  ``DynamicCache`` and the greedy token read back each step, and HF ``generate()`` of the same model
  ((time of n + 1 new tokens - time of 1) / n); at batch 1 and ``--member-batch``;
* each ensemble at batch 1 (default pair Qwen-1.5B + Gemma-270M; SmolLM2 + Gemma; all four) through
  the engine's own decode loop (``DecodeBatch``): the host path (what ``Ensemble.generate`` runs)
  and the device path (``generate_batch``'s, UniTE's top-k and gathers on the device), split into
  member time and step time, the step into top-k, gathers, union and scores, re-tokenisation
  (appending the chosen text to each member's track) and the rest; against the sum of the members'
  raw forwards;
* batches (``--batches``, default 1 8 32 64): aggregate tokens/s on the device path;
* peak GPU memory (``torch.cuda.max_memory_allocated``; on CPU the process's peak RSS).

Member times are taken with a device synchronize after each member's forward (the step would wait
for it at its first copy anyway), so the member/step split is the device's, not the launch queue's.
The targets of issue 29 are evaluated as booleans in ``targets``; a missed one carries the profile
that explains it.  ``--budget-s`` bounds the whole run: what does not fit is listed under
``skipped``, never silently dropped.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import importlib
import importlib.metadata
import itertools
import json
import math
import os
import platform
import re
import resource
import shutil
import statistics
import sys
import tempfile
import time
import traceback
import zipfile
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

T0 = time.perf_counter()
HERE = Path(__file__).resolve().parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

QWEN15, QWEN05, GEMMA, SMOL = "qwen2.5-coder-1.5b-instruct", "qwen2.5-coder-0.5b-instruct", "gemma3-270m", "smollm2-135m-instruct"
ENSEMBLES = {
    "default": [QWEN15, GEMMA],  # unite_llm.models.DEFAULT_ENSEMBLE
    "smollm2+gemma": [SMOL, GEMMA],
    "all4": [QWEN15, GEMMA, QWEN05, SMOL],
}
ALL = [QWEN15, QWEN05, GEMMA, SMOL]
# Issue 29's targets (on the GPU, one run, side by side).
ENSEMBLE_OVER_RAW = 1.10  # ensemble ms/token <= 1.10 x the sum of its members' raw forwards, batch 1
BATCH32_SPEEDUP = 16.0  # default pair: batch-32 aggregate tokens/s >= 16 x batch 1
MEMBER_OVER_GENERATE = 1.05  # our member's forward <= 1.05 x HF generate()'s per-token time
PROMPT = (
    "The lighthouse keeper climbed the spiral stairs every evening at dusk, counting the steps as his "
    "father had taught him. Two hundred and twelve. At the top he trimmed the wick, wiped the salt from "
    "the great lens and looked out over the grey water, where"
)
# The tiny configuration: real tokenizers and vocabularies, a model shrunk to a few small layers.
TINY = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2, "num_key_value_heads": 1}
TINY_HEAD_DIM = 32


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--tiny", action="store_true", help="CPU-sized models (2 layers, hidden 64) with the real vocabularies")
    ap.add_argument("--out", type=Path, required=True, help="the JSON to write")
    ap.add_argument("--folder", type=Path, help="the folder prepare.py built")
    ap.add_argument("--tokens", type=int, help="timed decode steps per measurement (default 32; tiny 6)")
    ap.add_argument("--batch-tokens", type=int, help="timed steps per batch measurement (default 16; tiny 4)")
    ap.add_argument("--batches", type=int, nargs="+", help="batch sizes (default 1 8 32 64; tiny 1 2)")
    ap.add_argument("--member-batch", type=int, help="second batch size for members alone (default 32; tiny 2)")
    ap.add_argument("--repeats", type=int, help="repeats of each member-alone timing, median taken (default 3; tiny 1)")
    ap.add_argument("--ensembles", nargs="+", choices=list(ENSEMBLES), default=list(ENSEMBLES))
    ap.add_argument("--budget-s", type=float, help="stop starting measurements after this many seconds (default 300; tiny 170)")
    ap.add_argument("--weights", action="append", default=[], metavar="ALIAS=DIR", help="real weights from a transformers folder")
    ap.add_argument(
        "--logit-std",
        default="match",
        help="random models' logit spread: 'match' (the real model's, from prepare.py), a number, or 'none' (as initialised)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--k", type=int, default=10, help="UniTE's top-k")
    ap.add_argument("--threads", type=int, help="torch CPU threads")
    args = ap.parse_args(argv)
    tiny = args.tiny
    defaults = {
        "tokens": 6 if tiny else 32,
        "batch_tokens": 4 if tiny else 16,
        "batches": [1, 2] if tiny else [1, 8, 32, 64],
        "member_batch": 2 if tiny else 32,
        "repeats": 1 if tiny else 3,
        "budget_s": 170.0 if tiny else 300.0,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


# -- the folder: sources, configs, tokenizers, wheels -------------------------------------------


def find_folder(given: Path | None) -> Path:
    if given is not None:
        return given.resolve()
    if (HERE / "manifest.json").is_file():
        return HERE
    return HERE.parents[1] / "build" / "gpu-bench"


def _version_key(text: str) -> tuple[Any, ...]:
    try:
        from packaging.version import Version

        return (Version(text),)
    except Exception:  # no packaging, or an odd version string
        return tuple(int(p) if p.isdigit() else p for p in re.split(r"[.+-]", text))


def bootstrap(folder: Path) -> list[str]:
    """Put the folder's ``src`` on the path and unpack each wheel whose package is missing or older."""
    src = folder / "src" if (folder / "src" / "unite_llm").is_dir() else HERE.parents[1] / "src"
    sys.path.insert(0, str(src))
    used = []
    site = Path(tempfile.mkdtemp(prefix="unite-gpu-site-"))
    for wheel in sorted((folder / "wheels").glob("*.whl")):
        dist, version = wheel.name.split("-")[:2]
        try:
            have = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            have = None
        if have is None or _version_key(have) < _version_key(version):
            with zipfile.ZipFile(wheel) as z:
                z.extractall(site)
            used.append(wheel.name)
    if used:
        sys.path.insert(0, str(site))
        importlib.invalidate_caches()
    return used


# -- timing ------------------------------------------------------------------------------------


class Profile:
    """Seconds and calls per key, summed between resets."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()

    def add(self, key: str, seconds: float) -> None:
        self.seconds[key] += seconds
        self.calls[key] += 1

    def wrap(self, fn: Callable[..., Any], key: str, sync: Callable[[], None] | None = None) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            out = fn(*args, **kwargs)
            if sync is not None:
                sync()
            self.add(key, time.perf_counter() - t)
            return out

        return timed


def ms(seconds: float, n: int) -> float:
    return 1000.0 * seconds / n if n else float("nan")


def rounded(x: Any) -> Any:
    if isinstance(x, float):
        return round(x, 4) if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: rounded(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [rounded(v) for v in x]
    return x


class Bench:
    def __init__(self, args: argparse.Namespace, folder: Path) -> None:
        import torch

        self.args = args
        self.folder = folder
        self.torch = torch
        self.cuda = args.device == "cuda"
        if self.cuda and not torch.cuda.is_available():
            raise SystemExit("--device cuda, but torch sees no CUDA device (use --device cpu --tiny for the CPU check)")
        self.device = torch.device("cuda:0" if self.cuda else "cpu")
        self.dtype = torch.bfloat16 if self.cuda else torch.float32
        if args.threads:
            torch.set_num_threads(args.threads)
        self.deadline = T0 + args.budget_s
        self.skipped: list[str] = []
        self.errors: list[str] = []
        self.overall_peak = 0
        self.notes: list[str] = []
        self.prof = Profile()
        self.members: dict[str, Any] = {}
        self.model_info: dict[str, Any] = {}
        self._rows = itertools.count(1 << 40)

    # -- helpers

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def fits(self, what: str) -> bool:
        if self.left() > 0:
            return True
        self.skipped.append(f"{what}: the {self.args.budget_s:.0f} s budget was spent")
        return False

    def reset_peak(self) -> None:
        if self.cuda:
            self.sync()
            self.overall_peak = max(self.overall_peak, self.torch.cuda.max_memory_allocated())
            self.torch.cuda.reset_peak_memory_stats()

    def attempt(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        """One measurement, ``fn(*args)``; a failure is recorded under ``errors`` and the run goes on."""
        try:
            return fn(*args)
        except Exception:
            self.errors.append(f"{what}: {traceback.format_exc()}")
            return None

    def peak_mb(self) -> float | None:
        if self.cuda:
            return self.torch.cuda.max_memory_allocated() / 2**20
        return None

    # -- members

    def manifest(self) -> dict[str, Any]:
        path = self.folder / "manifest.json"
        if not path.is_file():
            raise SystemExit(f"{self.folder} is not a folder from bench/gpu/prepare.py (no manifest.json): run it first")
        return json.loads(path.read_text())

    def config(self, alias: str, entry: dict[str, Any]) -> Any:
        from transformers import AutoConfig

        data = json.loads((self.folder / entry["config"]).read_text())
        if self.args.tiny:
            n = TINY["num_hidden_layers"]
            data |= TINY
            data["head_dim"] = TINY_HEAD_DIM
            if data.get("layer_types"):
                data["layer_types"] = list(data["layer_types"])[-n:]  # Gemma: keeps one full-attention layer
            if "max_window_layers" in data:
                data["max_window_layers"] = n
            if "query_pre_attn_scalar" in data:
                data["query_pre_attn_scalar"] = TINY_HEAD_DIM
        for key in [k for k in data if k.startswith("_") or k == "transformers_version"]:
            data.pop(key)
        return AutoConfig.for_model(data.pop("model_type"), **data)

    def tokenizer_dir(self, alias: str, entry: dict[str, Any]) -> Path:
        """A folder transformers can load the tokenizer from: the model's small files and its tokenizer.json, unzipped."""
        out = Path(tempfile.mkdtemp(prefix=f"unite-gpu-{alias}-"))
        for f in (self.folder / "models" / alias).iterdir():
            if f.name != "config.json":
                shutil.copy2(f, out / f.name)
        with gzip.open(self.folder / entry["tokenizer_json"], "rb") as fin, open(out / "tokenizer.json", "wb") as fout:
            shutil.copyfileobj(fin, fout)
        return out

    def load_members(self, aliases: list[str]) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from unite_llm.members.transformers import TransformersMember

        manifest = self.manifest()
        real = dict(w.split("=", 1) for w in self.args.weights)
        for alias in aliases:
            i = ALL.index(alias)  # each model's seed, whichever ensembles run
            t0 = time.perf_counter()
            if alias not in real:
                entry = manifest["models"].get(alias)
                if entry is None:
                    raise SystemExit(f"{alias} is not in {self.folder}/manifest.json (prepare.py --models {alias})")
                config = self.config(alias, entry)
                self.torch.manual_seed(self.args.seed + i)
                with self.device:
                    try:
                        model = AutoModelForCausalLM.from_config(config, dtype=self.dtype)
                    except TypeError:  # transformers < 4.56 names it torch_dtype
                        model = AutoModelForCausalLM.from_config(config, torch_dtype=self.dtype)
                tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_dir(alias, entry))
                member = TransformersMember.from_model(model, tokenizer, name=alias, n_ctx=4096)
                weights = f"random (seed {self.args.seed + i})"
                spread = self.spread(member, entry)
            else:
                member = TransformersMember(real[alias], name=alias, device=str(self.device), dtype=self.dtype)
                weights = f"hf:{real[alias]}"
                spread = {"logit_std": self.logit_std(member)}
            model = member.model
            cfg = model.config.get_text_config()
            self.members[alias] = member
            self.model_info[alias] = {
                "class": type(model).__name__,
                "weights": weights,
                "params": sum(p.numel() for p in model.parameters()),
                "vocab": int(cfg.vocab_size),
                "layers": int(cfg.num_hidden_layers),
                "hidden_size": int(cfg.hidden_size),
                "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
                "attention": getattr(model.config, "_attn_implementation", None),
                "load_s": time.perf_counter() - t0,
            } | spread

    def logit_std(self, member: Any) -> float:
        """The spread of the member's next-token logits after the prompt (std over the vocabulary)."""
        torch = self.torch
        with torch.inference_mode():
            ids = torch.tensor([self.prompt_ids(member)], device=self.device)
            logits = member.model(input_ids=ids, logits_to_keep=1).logits[0, -1].float()
        return float(logits.std())

    def spread(self, member: Any, entry: dict[str, Any]) -> dict[str, Any]:
        """Scale a random model's logits to a trained model's spread, through its final norm's gain.

        Random initialisation gives nearly flat logits (std ~0.5 at SmolLM2's and Gemma's real sizes),
        which no trained model has; the host path's top-k (a threshold below the max) and the union's
        size depend on it.
        The final RMSNorm's gain multiplies every logit, so setting it costs no compute."""
        torch = self.torch
        choice = str(self.args.logit_std)
        before = self.logit_std(member)
        if choice == "none":
            return {"logit_std": before, "logit_std_as_initialised": before}
        target = entry.get("logit_std") if choice == "match" else float(choice)
        if not target:
            self.notes.append(f"{member.name}: no measured logit spread in the manifest; its logits are as initialised")
            return {"logit_std": before, "logit_std_as_initialised": before}
        norm = member.model.get_decoder().norm
        scale = float(target) / before
        with torch.no_grad():
            if bool((norm.weight == 0).all()):  # Gemma's RMSNorm multiplies by (1 + weight)
                norm.weight.fill_(scale - 1.0)
            else:
                norm.weight.mul_(scale)
        return {"logit_std": self.logit_std(member), "logit_std_target": float(target), "logit_std_as_initialised": before}

    def prompt_ids(self, member: Any) -> list[int]:
        return member.tokenize(PROMPT.encode(), add_bos=True)

    # -- members alone

    def ours(self, member: Any, rows: int, n: int, *, device_scores: bool) -> float:
        """Seconds per step of our member: prefill, then n greedy steps (each with its token read back)."""
        import numpy as np

        torch = self.torch
        prompt = self.prompt_ids(member)
        member.reset()
        if rows == 1 and not device_scores:
            ctx = list(prompt)
            logits = member.next_logits(ctx)
            t = time.perf_counter()
            for _ in range(n):
                ctx.append(int(np.argmax(logits)))
                logits = member.next_logits(ctx)
            return (time.perf_counter() - t) / n
        names = [next(self._rows) for _ in range(rows)]
        ctxs = [list(prompt) for _ in range(rows)]
        best = torch.as_tensor(member.next_logits_batch(ctxs, names)).argmax(-1).tolist()
        t = time.perf_counter()
        for _ in range(n):  # as raw(): a forward, then its greedy tokens on the host
            for ctx, tok in zip(ctxs, best):
                ctx.append(int(tok))
            best = torch.as_tensor(member.next_logits_batch(ctxs, names)).argmax(-1).tolist()
        return (time.perf_counter() - t) / n

    def raw(self, member: Any, rows: int, n: int) -> float:
        """Seconds per step of a plain forward with a DynamicCache, the greedy token read back each step."""
        torch = self.torch
        from transformers import DynamicCache

        model, kw = member.model, member._cache_kw
        ids = torch.tensor([self.prompt_ids(member)] * rows, device=self.device)
        with torch.inference_mode():
            cache = DynamicCache()
            out = model(input_ids=ids, use_cache=True, logits_to_keep=1, **{kw: cache})
            tok = out.logits[:, -1].argmax(-1).tolist()
            t = time.perf_counter()
            for _ in range(n):
                out = model(
                    input_ids=torch.tensor(tok, device=self.device)[:, None], use_cache=True, logits_to_keep=1, **{kw: cache}
                )
                tok = out.logits[:, -1].argmax(-1).tolist()
            return (time.perf_counter() - t) / n

    def generate(self, member: Any, rows: int, n: int) -> tuple[float, int]:
        """Seconds per new token of HF generate() (greedy, no EOS): (T(n + 1) - T(1)) / n; and the tokens it made."""
        torch = self.torch
        model = member.model
        ids = torch.tensor([self.prompt_ids(member)] * rows, device=self.device)
        mask = torch.ones_like(ids)
        saved = model.generation_config
        gc = copy.deepcopy(saved)
        gc.eos_token_id = None  # every call makes exactly the tokens asked for
        gc.do_sample, gc.temperature, gc.top_p, gc.top_k = False, None, None, None
        gc.pad_token_id = member._pad_id
        model.generation_config = gc
        try:
            times = {}
            made = 0
            for new in (1, n + 1):
                gc.max_new_tokens = gc.min_new_tokens = new
                self.sync()
                t = time.perf_counter()
                with torch.inference_mode():
                    out = model.generate(input_ids=ids, attention_mask=mask, generation_config=gc)
                out.tolist()
                times[new] = time.perf_counter() - t
                made = int(out.shape[1] - ids.shape[1])
        finally:
            model.generation_config = saved
        return (times[n + 1] - times[1]) / max(1, made - 1), made

    def member_alone(self, alias: str) -> dict[str, Any]:
        member = self.members[alias]
        n, reps = self.args.tokens, self.args.repeats
        out: dict[str, Any] = {}
        for rows in sorted({1, self.args.member_batch}):
            if not self.fits(f"member {alias} batch {rows}"):
                break
            self.reset_peak()
            warm = min(2, n)
            self.ours(member, rows, warm, device_scores=False)
            self.raw(member, rows, warm)
            self.generate(member, rows, warm)
            r: dict[str, Any] = {"rows": rows}
            samples: dict[str, list[float]] = defaultdict(list)
            made = 0
            for _ in range(reps):  # interleaved, so drift hits every variant alike
                if rows == 1:
                    samples["ours_host"].append(self.ours(member, 1, n, device_scores=False))
                samples["ours_device"].append(self.ours(member, rows, n, device_scores=True))
                samples["raw_forward"].append(self.raw(member, rows, n))
                g, made = self.generate(member, rows, n)
                samples["hf_generate"].append(g)
            for key, values in samples.items():
                r[f"{key}_ms_per_step"] = 1000 * statistics.median(values)
            r["hf_generate_new_tokens"] = made
            r["tokens_per_s"] = {
                k.removesuffix("_ms_per_step"): rows * 1000 / v for k, v in r.items() if k.endswith("_ms_per_step")
            }
            ours = r.get("ours_host_ms_per_step", r["ours_device_ms_per_step"])
            r["ours_over_generate"] = ours / r["hf_generate_ms_per_step"]
            r["ours_device_over_generate"] = r["ours_device_ms_per_step"] / r["hf_generate_ms_per_step"]
            r["peak_gpu_mb"] = self.peak_mb()
            out[str(rows)] = r
        member.reset()
        return out

    # -- the ensemble through the engine's decode loop

    def instrument(self) -> None:
        """Time each member's forward (synchronized), the step method, top-k, gathers and re-tokenisation."""
        from unite_llm.scores import DenseScores

        for alias, m in self.members.items():
            m.next_logits = self.prof.wrap(m.next_logits, f"member:{alias}", self.sync)
            m.next_logits_batch = self.prof.wrap(m.next_logits_batch, f"member:{alias}", self.sync)
        # The host path's top-k (a full score row on the host) is DenseScores' own.
        original = DenseScores.top_k_ids
        prof = self.prof

        def top_k_ids(scores: Any, *args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            out = original(scores, *args, **kwargs)
            prof.add("topk", time.perf_counter() - t)
            return out

        DenseScores.top_k_ids = top_k_ids

    def ensemble(self, aliases: list[str]) -> Any:
        from unite_llm import Ensemble
        from unite_llm.methods.unite import BatchedUniTE

        ens = Ensemble([self.members[a] for a in aliases], k=self.args.k, parallel=False)
        batched = BatchedUniTE(ens.method.k)
        batched.top_ids = self.prof.wrap(batched.top_ids, "topk")
        batched.gather = self.prof.wrap(batched.gather, "gather")
        ens.method._batched = batched
        ens.engine.step = self.prof.wrap(ens.engine.step, "step_method")
        ens.engine.append = self.prof.wrap(ens.engine.append, "append")
        return ens

    def decode(self, ens: Any, rows: int, n: int, *, batched: bool) -> dict[str, Any]:
        """n timed steps of ``rows`` rows through DecodeBatch (after one untimed prefill step)."""
        from unite_llm.engine import DecodeBatch
        from unite_llm.sampling import GenerationConfig

        config = GenerationConfig(max_new_tokens=n + 1, ignore_eos=True)
        prompts = [PROMPT if rows == 1 else f"Story {b + 1}. {PROMPT}" for b in range(rows)]
        self.reset_peak()
        walls: list[float] = []
        unions: list[int] = []
        with ens.exclusive():
            batch = DecodeBatch(ens.engine, batched=batched)
            for p in prompts:
                batch.add(ens.start_tracks(p, chat=False), config)
            batch.step()  # every prompt's prefill and the first step
            self.prof.reset()
            before = {m.name: m.n_evaluated for m in ens.members}
            while batch:
                t = time.perf_counter()
                chunks = batch.step()
                walls.append(time.perf_counter() - t)
                unions += [c.step.union_size for _, c in chunks if c.step is not None]
        steps, wall = len(walls), sum(walls)
        sec = dict(self.prof.seconds)
        members = {m.name: ms(sec.get(f"member:{m.name}", 0.0), steps) for m in ens.members}
        member_ms = sum(members.values())
        step_ms = ms(wall, steps) - member_ms
        method = ms(sec.get("step_method", 0.0), steps)
        topk, gather, append = (ms(sec.get(k, 0.0), steps) for k in ("topk", "gather", "append"))
        return {
            "rows": rows,
            "steps": steps,
            "path": "device" if batched else "host",
            "ms_per_step": ms(wall, steps),
            "tokens_per_s": rows * steps / wall if wall else float("nan"),
            "members_ms_per_step": member_ms,
            "member_ms_per_step": members,
            "step_ms_per_step": step_ms,
            "step_parts_ms_per_step": {
                "topk": topk,
                "gather": gather,
                "union_and_scores": method - topk - gather,
                "retokenize_append": append,
                "other": step_ms - method - append,
            },
            "tokens_evaluated_per_step": {m.name: (m.n_evaluated - before[m.name]) / steps / rows for m in ens.members},
            "mean_union_size": statistics.fmean(unions) if unions else None,
            "peak_gpu_mb": self.peak_mb(),
        }

    def ensemble_runs(self, name: str, aliases: list[str], raw_ms: dict[str, float]) -> dict[str, Any]:
        ens = self.ensemble(aliases)
        n = self.args.tokens
        out: dict[str, Any] = {"members": aliases, "k": self.args.k, "gate": None, "parallel": False}
        self.decode(ens, 1, min(2, n), batched=False)  # warm-up
        self.decode(ens, 1, min(2, n), batched=True)
        sum_raw = sum(raw_ms[a] for a in aliases)
        out["sum_raw_forward_ms_per_step"] = sum_raw
        b1: dict[str, Any] = {}
        for batched in (False, True):
            r = self.decode(ens, 1, n, batched=batched)
            r["over_sum_raw_forward"] = r["ms_per_step"] / sum_raw
            b1[r["path"]] = r
        out["batch1"] = b1
        return out

    def batch_run(self, ens: Any, rows: int) -> dict[str, Any]:
        self.decode(ens, rows, 1, batched=True)  # warm-up at this size
        return self.decode(ens, rows, self.args.batch_tokens, batched=True)

    def throughput(self, name: str, aliases: list[str]) -> dict[str, Any]:
        ens = self.ensemble(aliases)
        out: dict[str, Any] = {}
        for rows in self.args.batches:
            if not self.fits(f"{name} batch {rows}"):
                break

            r = self.attempt(f"{name} batch {rows}", self.batch_run, ens, rows)
            if r is not None:
                out[str(rows)] = r
        return out


def targets_of(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 29's targets as booleans, each missed one with the numbers that explain it."""
    out: list[dict[str, Any]] = []
    for alias, rows in result["members"].items():
        for key, r in rows.items():
            for variant, field in (("next_logits", "ours_over_generate"), ("next_logits_batch", "ours_device_over_generate")):
                if variant == "next_logits" and "ours_host_ms_per_step" not in r:
                    continue
                t = {
                    "target": f"member forward <= {MEMBER_OVER_GENERATE} x HF generate()",
                    "member": alias,
                    "rows": int(key),
                    "ours": variant,
                    "value": r[field],
                    "limit": MEMBER_OVER_GENERATE,
                    "met": r[field] <= MEMBER_OVER_GENERATE,
                }
                if not t["met"]:
                    t["profile_ms_per_step"] = {
                        k.removesuffix("_ms_per_step"): v for k, v in r.items() if k.endswith("_ms_per_step")
                    }
                out.append(t)
    for name, e in result["ensembles"].items():
        for path, r in e.get("batch1", {}).items():
            t = {
                "target": f"ensemble step <= {ENSEMBLE_OVER_RAW} x sum of members' raw forwards (batch 1)",
                "ensemble": name,
                "path": path,
                "value": r["over_sum_raw_forward"],
                "limit": ENSEMBLE_OVER_RAW,
                "met": r["over_sum_raw_forward"] <= ENSEMBLE_OVER_RAW,
            }
            if not t["met"]:
                t["profile_ms_per_step"] = {
                    "total": r["ms_per_step"],
                    "sum_raw_forward": e["sum_raw_forward_ms_per_step"],
                    "members": r["member_ms_per_step"],
                    "step": r["step_ms_per_step"],
                    "step_parts": r["step_parts_ms_per_step"],
                }
            out.append(t)
    tp = result["ensembles"].get("default", {}).get("throughput", {})
    if "1" in tp and "32" in tp:
        value = tp["32"]["tokens_per_s"] / tp["1"]["tokens_per_s"]
        t = {
            "target": f"default pair: batch-32 tokens/s >= {BATCH32_SPEEDUP:g} x batch 1",
            "ensemble": "default",
            "value": value,
            "limit": BATCH32_SPEEDUP,
            "met": value >= BATCH32_SPEEDUP,
        }
        if not t["met"]:
            t["profile_ms_per_step"] = {
                rows: {"total": r["ms_per_step"], "members": r["members_ms_per_step"], "step_parts": r["step_parts_ms_per_step"]}
                for rows, r in tp.items()
            }
        out.append(t)
    return out


def environment(bench: Bench) -> dict[str, Any]:
    torch = bench.torch
    import transformers

    env: dict[str, Any] = {
        "device": bench.args.device,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }
    if bench.cuda:
        props = torch.cuda.get_device_properties(0)
        env |= {
            "gpu": props.name,
            "gpu_memory_mb": props.total_memory / 2**20,
            "cuda": torch.version.cuda,
            "capability": list(torch.cuda.get_device_capability(0)),
        }
    return env


def run(args: argparse.Namespace) -> dict[str, Any]:
    folder = find_folder(args.folder)
    wheels = bootstrap(folder)
    bench = Bench(args, folder)
    result: dict[str, Any] = {
        "schema": "unite-gpu-bench/1",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "wheels_unpacked": wheels,
    }
    manifest = bench.manifest()
    result["folder"] = {
        "path": str(folder),
        "commit": manifest.get("commit"),
        "dirty": manifest.get("dirty"),
        "bytes": manifest.get("total_bytes"),
    }
    result["environment"] = environment(bench)
    result["members"], result["ensembles"] = {}, {}
    result["targets"] = []
    try:
        aliases = list(dict.fromkeys(a for e in args.ensembles for a in ENSEMBLES[e]))
        bench.reset_peak()
        bench.load_members(aliases)
        result["models"] = bench.model_info
        result["setup_s"] = time.perf_counter() - T0
        for alias in aliases:
            alone = bench.attempt(f"member {alias}", bench.member_alone, alias)
            if alone is not None:
                result["members"][alias] = alone
        raw = {a: r["1"]["raw_forward_ms_per_step"] for a, r in result["members"].items() if "1" in r}
        bench.instrument()
        # Batch 1 of every ensemble first, then the batches (the default pair's first).
        for name in args.ensembles:
            if all(a in raw for a in ENSEMBLES[name]) and bench.fits(f"{name} batch 1"):
                runs = bench.attempt(f"{name} batch 1", bench.ensemble_runs, name, ENSEMBLES[name], raw)
                if runs is not None:
                    result["ensembles"][name] = runs
        for name in args.ensembles:
            if name in result["ensembles"]:
                result["ensembles"][name]["throughput"] = bench.throughput(name, ENSEMBLES[name])
        result["targets"] = targets_of(result)
    except Exception:
        result["error"] = traceback.format_exc()
    result["skipped"] = bench.skipped
    result["errors"] = bench.errors
    result["targets_apply"] = bench.cuda and not args.tiny
    weights = "some members with real weights" if args.weights else "random weights give representative speed, not text"
    result["notes"] = [
        *bench.notes,
        "member times: a device synchronize after each member's forward; step = the rest of the engine's step",
        "greedy, ignore_eos; UniTE without a gate (every step consults every member); members one after the other",
        weights,
    ]
    if bench.cuda:
        bench.reset_peak()  # folds the last measurement's peak in
        result["peak_gpu_memory_mb"] = bench.overall_peak / 2**20
        result["peak_gpu_memory_reserved_mb"] = bench.torch.cuda.max_memory_reserved() / 2**20
    else:
        result["peak_gpu_memory_mb"] = None
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["wall_s"] = time.perf_counter() - T0
    return result


def summary(result: dict[str, Any]) -> str:
    lines = [f"wall {result['wall_s']:.0f} s on {result['environment'].get('gpu', result['environment']['device'])}"]
    for alias, rows in result["members"].items():
        for key, r in rows.items():
            lines.append(
                f"  {alias} x{key}: ours {r.get('ours_host_ms_per_step', r['ours_device_ms_per_step']):.2f} ms "
                f"(device {r['ours_device_ms_per_step']:.2f}), raw {r['raw_forward_ms_per_step']:.2f}, "
                f"generate {r['hf_generate_ms_per_step']:.2f}"
            )
    for name, e in result["ensembles"].items():
        for path, r in e.get("batch1", {}).items():
            lines.append(
                f"  {name} batch 1 ({path}): {r['ms_per_step']:.2f} ms/token = members {r['members_ms_per_step']:.2f} + "
                f"step {r['step_ms_per_step']:.2f}; {r['over_sum_raw_forward']:.2f} x sum of raw forwards"
            )
        for rows, r in e.get("throughput", {}).items():
            lines.append(f"  {name} batch {rows}: {r['tokens_per_s']:.1f} tokens/s")
    for t in result["targets"]:
        who = " ".join(str(t[k]) for k in ("member", "ensemble", "path", "ours") if k in t)
        rows = f" x{t['rows']}" if "rows" in t else ""
        lines.append(f"  target {'met   ' if t['met'] else 'MISSED'} {t['target']} [{who}{rows}]: {t['value']:.3f}")
    if result.get("skipped"):
        lines.append(f"  skipped: {'; '.join(result['skipped'])}")
    for error in result.get("errors", []):
        lines.append("  ERROR " + error)
    if result.get("error"):
        lines.append("  ERROR:\n" + result["error"])
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    result = rounded(run(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(summary(result))
    print(f"wrote {args.out}")
    return 1 if result.get("error") or result.get("errors") else 0


if __name__ == "__main__":
    sys.exit(main())
