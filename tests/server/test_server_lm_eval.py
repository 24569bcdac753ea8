"""lm-evaluation-harness against the server, as a user would run it.

A small ``generate_until`` task is built from LAMBADA in ``../shared/datasets`` (predict
the passage's last word) and run through lm-eval's ``local-completions`` and
``local-chat-completions`` models pointed at the test server.  The harness's recorded
responses must be exactly what the ensemble generates for the same context and
settings, which shows the harness really talked to this server and parsed its answers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

N = 4
TASK = "unite_lambada_gen"
YAML = """\
task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{text.rsplit(' ', 1)[0]}}}}"
doc_to_target: "{{{{text.rsplit(' ', 1)[1]}}}}"
generation_kwargs:
  until: ["\\n", ".", ","]
  max_gen_toks: 6
  do_sample: false
filter_list:
  - name: first_word
    filter:
      - function: regex
        regex_pattern: "\\\\w+"
      - function: take_first
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
    ignore_punctuation: true
metadata:
  version: 1.0
"""


@pytest.fixture(scope="module")
def task_dir(datasets, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("lm_eval_task")
    # The N shortest of the first 500 passages: the harness path is under test, not long prefills.
    lines = (datasets / "lambada" / "lambada_test.jsonl").read_text(encoding="utf-8").splitlines()[:500]
    lines = sorted(lines, key=lambda line: len(json.loads(line)["text"]))[:N]
    (d / "lambada_small.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (d / f"{TASK}.yaml").write_text(YAML.format(task=TASK, data=d / "lambada_small.jsonl"), encoding="utf-8")
    return d


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))


def run_harness(server, task_dir: Path, *, chat: bool) -> dict:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    endpoint = "chat/completions" if chat else "completions"
    args = (
        f"model={server.model},base_url={server.v1}/{endpoint},tokenizer_backend=none,tokenized_requests=False,"
        "num_concurrent=1,max_retries=1,timeout=300"
    )
    return simple_evaluate(
        model="local-chat-completions" if chat else "local-completions",
        model_args=args,
        tasks=[TASK],
        task_manager=TaskManager(include_path=str(task_dir)),
        limit=N,
        log_samples=True,
        apply_chat_template=chat,
        bootstrap_iters=0,
    )


@pytest.mark.parametrize("chat", [False, True], ids=["local-completions", "local-chat-completions"])
def test_lm_eval_against_server(server, task_dir, chat):
    before = server.wait_idle()
    results = run_harness(server, task_dir, chat=chat)
    after = server.wait_idle()
    assert after["completed"] - before["completed"] == N
    score = results["results"][TASK]["exact_match,first_word"]
    assert 0.0 <= score <= 1.0
    samples = results["samples"][TASK]
    assert len(samples) == N
    hits = 0
    for s in samples:
        ((context, gen),) = s["arguments"]
        # In chat mode the harness sends the context as the content of one user message.
        raw = getattr(context, "prompt", context)
        if isinstance(raw, tuple | list) and len(raw) == 1:  # some lm-eval versions wrap it
            raw = raw[0]
        prompt = json.loads(raw)[-1]["content"] if chat else raw
        want = server.generate(
            [{"role": "user", "content": prompt}] if chat else prompt,
            chat=chat,
            max_new_tokens=gen["max_gen_toks"],
            stop=gen["until"],
        ).text
        assert s["resps"][0][0] == want
        hits += s["exact_match"]
    assert score == pytest.approx(hits / N)
    assert os.environ["HF_DATASETS_OFFLINE"] == "1"
