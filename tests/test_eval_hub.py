"""Built-in tasks load through their Hugging Face hub sources when no local copy exists.

Nothing can be downloaded here, so the hub is what a user's machine holds once it has been
online: the ``datasets`` cache of each prepared dataset, read in offline mode
(``HF_HUB_OFFLINE=1``) by the very ``datasets.load_dataset("allenai/ai2_arc",
"ARC-Challenge", split="test")`` calls the task files make.  The cached tables are built
from the shared copies, in each hub dataset's own schema (nested ``choices``, numeric
``answerKey``s, integer ``label``s, one config per CMMLU subject), and the items are
checked against golds worked out here by hand from the raw records, and, where the local
copy has the same records, against the items the local files give.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from unite_llm.eval.tasks import Task, default_datasets_dir

DATA = default_datasets_dir()

pytestmark = pytest.mark.slow  # builds a Hugging Face datasets cache in a subprocess first (~15 s)

# Builds the hub cache from the shared copies, then prints every task's items as JSON.
# It runs in a child process because `datasets` reads HF_HOME and HF_HUB_OFFLINE on import.
CHILD = r"""
import csv, json, os, shutil, sys
from pathlib import Path
import pyarrow as pa, pyarrow.parquet as pq
from datasets import config
from datasets.packaged_modules.parquet.parquet import Parquet

data = Path(sys.argv[1])

def jsonl(rel):
    return [json.loads(line) for line in (data / rel).open(encoding="utf-8") if line.strip()]

def cache(repo, name, splits):
    # What `load_dataset(repo, name)` leaves in the cache after an online run.
    build = Path(config.HF_DATASETS_CACHE) / "_build"
    build.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, records in splits.items():
        f = build / f"{repo.replace('/', '_')}-{name}-{split}.parquet"
        pq.write_table(pa.Table.from_pylist(records), f)
        files[split] = str(f)
    b = Parquet(dataset_name=repo.split("/")[1], config_name=name, data_files=files, hash="0" * 16)
    b.download_and_prepare()
    dst = Path(config.HF_DATASETS_CACHE) / repo.replace("/", "___") / name / "0.0.0" / ("0" * 16)
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(b.cache_dir, dst)

cache("allenai/ai2_arc", "ARC-Challenge", {"test": jsonl("arc/ai2_arc__ARC-Challenge__validation.jsonl")})
cache("openai/gsm8k", "main", {"test": jsonl("gsm8k/test.jsonl")})
cache("mandarjoshi/trivia_qa", "rc.wikipedia.nocontext",
      {"validation": jsonl("triviaqa/trivia_qa__rc.wikipedia.nocontext__validation.jsonl")})
cache("google-research-datasets/nq_open", "default", {"validation": jsonl("nq_open/NQ-open.dev.jsonl")})
cache("EleutherAI/lambada_openai", "default", {"test": jsonl("lambada/lambada_test.jsonl")})
cache("cais/mmlu", "all", {"test": jsonl("mmlu/mmlu_test.jsonl"), "dev": jsonl("mmlu/mmlu_dev.jsonl")})
labels = (data / "piqa/valid-labels.lst").read_text().split()
cache("baber/piqa", "default", {"validation": [{**r, "label": int(l)} for r, l in zip(jsonl("piqa/valid.jsonl"), labels)]})
for f in sorted((data / "cmmlu/test").glob("*.csv")):
    def rows(p):
        with p.open(encoding="utf-8", newline="") as fh:
            return [{k: v for k, v in r.items() if k} for r in csv.DictReader(fh)]  # the hub has no index column
    cache("haonan-li/cmmlu", f.stem, {"test": rows(f), "dev": rows(data / "cmmlu/dev" / f.name)})

from unite_llm.eval.tasks import Task
out = {}
for name in ["arc_challenge", "gsm8k", "triviaqa", "nq", "lambada", "mmlu", "piqa", "cmmlu"]:
    task = Task.load(name, datasets_dir=os.environ["UNITE_DATASETS"])
    out[name] = [[it.id, it.prompt, it.gold, it.group] for it in task.items()]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def hub_items(tmp_path_factory: pytest.TempPathFactory, datasets: Path) -> dict[str, list[list]]:
    assert datasets.resolve() == DATA.resolve()  # the shared copies the cache is built from (the fixture fails if absent)
    tmp = tmp_path_factory.mktemp("hub")
    empty = tmp / "no-local-data"
    empty.mkdir()
    env = {**os.environ, "HF_HOME": str(tmp / "hf"), "HF_HUB_OFFLINE": "1", "UNITE_DATASETS": str(empty)}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(DATA)], env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


def _jsonl(rel: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / rel).open(encoding="utf-8") if line.strip()]


@pytest.mark.slow  # loads a model itself
def test_arc_answer_keys_that_are_digits_become_letters(hub_items: dict) -> None:
    raw = _jsonl("arc/ai2_arc__ARC-Challenge__validation.jsonl")
    items = hub_items["arc_challenge"]
    assert len(items) == len(raw)
    digits = 0
    for (_, prompt, gold, _), r in zip(items, raw):
        assert gold == "ABCDE"[r["choices"]["label"].index(r["answerKey"])]
        assert f"\nA. {r['choices']['text'][0]}\n" in prompt and prompt.endswith("Answer:")
        digits += r["answerKey"].isdigit()
    assert digits == 4  # the items whose hub answerKey is "1".."4"


def test_gsm8k_from_the_hub_uses_the_shipped_paper_shots(hub_items: dict) -> None:
    raw = _jsonl("gsm8k/test.jsonl")
    shots = (DATA / "unite_paper/GSM/gsm_prompt.txt").read_text(encoding="utf-8").rstrip("\n")
    items = hub_items["gsm8k"]
    assert len(items) == len(raw) == 1319
    for (_, prompt, gold, _), r in zip(items, raw):
        assert gold == r["answer"].split("####")[-1].strip().replace(",", "")
        assert prompt == f"{shots}\n\n\nQuestion: {r['question']}\nLet's think step by step\n"


def test_open_qa_golds_are_every_alias(hub_items: dict) -> None:
    trivia = _jsonl("triviaqa/trivia_qa__rc.wikipedia.nocontext__validation.jsonl")
    assert [i[2] for i in hub_items["triviaqa"]] == [r["answer"]["aliases"] for r in trivia]
    nq = _jsonl("nq_open/NQ-open.dev.jsonl")
    assert [i[2] for i in hub_items["nq"]] == [r["answer"] for r in nq]
    assert all(i[1].endswith(f"Question: {r['question']}\nAnswer:") for i, r in zip(hub_items["nq"], nq))


def test_piqa_integer_labels_become_letters(hub_items: dict) -> None:
    labels = (DATA / "piqa/valid-labels.lst").read_text().split()
    raw = _jsonl("piqa/valid.jsonl")
    items = hub_items["piqa"]
    assert [i[2] for i in items] == ["AB"[int(x)] for x in labels]
    assert all(f"\nA. {r['sol1']}\nB. {r['sol2']}\n" in i[1] for i, r in zip(items, raw))


@pytest.mark.parametrize("name", ["lambada", "mmlu", "cmmlu"])
@pytest.mark.slow  # loads a model itself
def test_hub_items_equal_the_local_files_items(hub_items: dict, name: str) -> None:
    """Same records two ways (local copy vs hub cache): the same ids, prompts, golds and groups."""
    local = [[it.id, it.prompt, it.gold, it.group] for it in Task.load(name, datasets_dir=DATA).items()]
    assert hub_items[name] == local
    if name == "cmmlu":  # every subject came back, with its own 5 dev shots
        assert len({g for *_, g in local}) == 67
        with (DATA / "cmmlu/dev/virology.csv").open(encoding="utf-8", newline="") as f:
            first_shot = next(csv.DictReader(f))["Question"]
        assert any(g == "virology" and first_shot in p for _, p, _, g in hub_items[name])
