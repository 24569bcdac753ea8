# The two commands the README promises, plus the benchmark.  Each sets itself up:
# a virtual environment in .venv with the package and its test tools installed.
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
PROMPT ?= Explain in two sentences why an ensemble of language models can beat a single model.

.PHONY: run test bench lint setup clean results

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,eval,baselines]'
	rm -f $(VENV)/.installed-*; touch $@

run: $(STAMP)
	$(BIN)/unite generate --chat --max-new-tokens 96 "$(PROMPT)"

test: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python bench/bench_core.py --out bench/results/core.json

# The paper table, ours (resumable: re-running skips finished items and rewrites the reports).
RESULTS_LIMIT ?= --limit 50 --limit gsm8k=15
results: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE nice -n 10 $(BIN)/unite eval --task lambada --task arc_challenge --task piqa --task mmlu \
	  --task triviaqa --task nq --task gsm8k --setting small --threads 1 $(RESULTS_LIMIT) --out results/paper \
	  --title "UniTE of SmolLM2-135M-Instruct and Gemma-3-270M" --no-progress

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
