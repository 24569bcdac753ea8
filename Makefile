# The two commands the README promises, plus the benchmark.  Each sets itself up:
# a virtual environment in .venv with the package and its test tools installed.
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
PROMPT ?= Explain in two sentences why an ensemble of language models can beat a single model.

.PHONY: run test bench lint setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,baselines]'
	rm -f $(VENV)/.installed-*; touch $@

run: $(STAMP)
	$(BIN)/unite generate --chat --max-new-tokens 96 "$(PROMPT)"

test: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python bench/bench_core.py --out bench/results/core.json

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
