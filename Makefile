# The two commands the README promises, plus the benchmark.  Each sets itself up:
# a virtual environment in .venv with the package and its test tools installed.
SHELL  := /bin/bash
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)
# The default ensemble includes a base model (Gemma-3-270M), so `make run` asks in the
# question/answer form that suits it (raw completion), not through a chat template.
export QUESTION ?= What do plants take in from the air to make their food, and what do they give off?

.PHONY: run test bench bench-gpu lint setup clean results baselines members4 lm-eval-results robust browser

setup: $(STAMP)

# llama.cpp is built from source for this CPU (-march=native) but without its AMX kernels:
# on AMX CPUs under some hypervisors (seen: Firecracker VMs) they die with a general protection
# fault at the first decode.  GCC's explicit -mno-* flags win over -march=native.  pip's wheel
# cache cannot tell builds apart by flags, so this one build bypasses it; a marker keyed on the
# flags keeps it to once per venv.  The version bound stays in pyproject.toml alone.
LLAMA_CPP_FLAGS := $(if $(filter x86_64,$(shell uname -m)),-mno-amx-tile -mno-amx-int8 -mno-amx-bf16)
LLAMA_MARK      := $(VENV)/.llama-cpp-built-$(shell echo '$(LLAMA_CPP_FLAGS)' | cksum | cut -d' ' -f1)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	test -f $(LLAMA_MARK) || { CMAKE_ARGS="-DCMAKE_C_FLAGS='$(LLAMA_CPP_FLAGS)' -DCMAKE_CXX_FLAGS='$(LLAMA_CPP_FLAGS)'" \
	  $(BIN)/python -m pip install -q --no-cache-dir --force-reinstall --no-deps -c constraints.txt llama-cpp-python \
	  && rm -f $(VENV)/.llama-cpp-built-* && touch $(LLAMA_MARK); }
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test,hf,eval,distributed,serve,baselines,qwen]'
	rm -f $(VENV)/.installed-*; touch $@

run: $(STAMP)
	$(BIN)/unite generate --max-new-tokens 96 --stop $$'\n' "Question: $$QUESTION"$$'\nAnswer:'


# Lint, format and types first (seconds), then every test; `.venv/bin/python -m pytest -m "not slow"`
# runs the fast tier alone (fake members, no model: well under a minute).
test: $(STAMP) browser
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python bench/bench_core.py --out bench/results/core.json

# The GPU benchmark (docs/gpu.md): the self-contained folder, then its one command, on this machine's
# CUDA GPU (needs a CUDA build of torch in the venv; elsewhere copy build/gpu-bench and run its run.sh).
GPU_OUT ?= bench/results/gpu.json
bench-gpu: $(STAMP)
	$(BIN)/python bench/gpu/prepare.py --out build/gpu-bench
	PYTHON=$(BIN)/python bash build/gpu-bench/run.sh --out $(GPU_OUT)

# The paper table, ours (resumable: re-running skips finished items and rewrites the reports).
RESULTS_LIMIT ?= --limit 300 --limit gsm8k=200
results: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE nice -n 10 $(BIN)/unite eval --task lambada --task arc_challenge --task piqa --task mmlu \
	  --task triviaqa --task nq --task gsm8k --setting small --threads 1 $(RESULTS_LIMIT) --out results/paper \
	  --title "UniTE of SmolLM2-135M-Instruct and Gemma-3-270M" --no-progress

# UniTE against the baselines on the same items (single members and UniTE are shared with
# results/paper through symlinks, so they are not run twice).  DeePEn's accuracy rows come
# from a separate, slower run of `--method deepen-fit` into the same folder; table_common.md
# compares every system on the items all of them finished.
baselines: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE nice -n 10 $(BIN)/unite eval --task triviaqa --task nq --task arc_challenge --task piqa \
	  --task mmlu --task gsm8k --setting small --threads 1 $(RESULTS_LIMIT) --method single --method unite \
	  --method gac --method packllm --method rank --out results/baselines --title "UniTE and the baselines" --no-progress
	$(BIN)/python bench/accuracy_table.py results/baselines --title "UniTE and the baselines, on the items every system finished"

# Four real models (results/members4): Determine-Then-Ensemble on held-out items per task, each
# model alone, and UniTE of the pairs the rule admits plus two it rejects (resumable; see
# results/members4/README.md).  The SmolLM2 and Gemma singles, and their pair, are shared with
# results/paper through symlinks.
FOUR      := qwen2.5-coder-1.5b-instruct gemma3-270m qwen2.5-coder-0.5b-instruct smollm2-135m-instruct
M4_TASKS  := triviaqa nq lambada arc_challenge piqa mmlu gsm8k
M4_EVAL    = OMP_WAIT_POLICY=PASSIVE nice -n 10 $(BIN)/unite eval --setting small --threads 1 $(RESULTS_LIMIT) \
             --out results/members4 --title "Four models" --no-progress
# task:memberA+memberB for every UniTE pair evaluated (admitted ones first, then the rejected ones)
M4_PAIRS  ?= triviaqa:qwen2.5-coder-1.5b-instruct+gemma3-270m triviaqa:qwen2.5-coder-1.5b-instruct+smollm2-135m-instruct \
             nq:qwen2.5-coder-1.5b-instruct+gemma3-270m nq:qwen2.5-coder-1.5b-instruct+smollm2-135m-instruct \
             lambada:qwen2.5-coder-1.5b-instruct+qwen2.5-coder-0.5b-instruct \
             triviaqa:qwen2.5-coder-1.5b-instruct+qwen2.5-coder-0.5b-instruct lambada:qwen2.5-coder-1.5b-instruct+gemma3-270m
members4: $(STAMP)
	for t in $(M4_TASKS); do seed=$$([ $$t = triviaqa ] && echo 0 || echo 1); \
	  OMP_WAIT_POLICY=PASSIVE nice -n 10 $(BIN)/unite select $(foreach m,$(FOUR),-c $(m)) --task $$t --limit 50 --seed $$seed \
	    --setting small --threads 1 --out results/members4/select/runs --write results/members4/select/$$t.yaml \
	    --report results/members4/select/$$t.md --no-progress || exit 1; done
	$(M4_EVAL) -m qwen2.5-coder-1.5b-instruct -m qwen2.5-coder-0.5b-instruct --method single $(foreach t,$(M4_TASKS),--task $(t))
	for p in $(M4_PAIRS); do t=$${p%%:*}; a=$${p#*:}; a1=$${a%%+*}; a2=$${a#*+}; \
	  $(M4_EVAL) -m $$a1 -m $$a2 --method unite --task $$t || exit 1; done
	$(BIN)/python bench/members_table.py results/members4

# lm-eval's standard multiple-choice prompts (results/lm_eval): one in-process run of the four-model
# ensemble records every member's log-likelihood of every request (scores.jsonl, resumable), from which
# bench/lm_eval_table.py computes each member, each pair with Qwen-1.5B and the four together.
space := $(subst ,, )
LM_EVAL_MEMBERS := $(subst $(space),+,$(FOUR))
lm-eval-results: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE nice -n 10 $(BIN)/python -m unite_llm.lm_eval_model --model unite \
	  --model_args members=$(LM_EVAL_MEMBERS),greedy_check=False,n_threads=1,scores_file=results/lm_eval/scores.jsonl \
	  --tasks unite_arc_easy,unite_arc_challenge,unite_piqa,unite_mmlu --include_path results/lm_eval/tasks \
	  --limit 300 --log_samples --output_path results/lm_eval/lm_eval_out
	$(BIN)/python bench/lm_eval_table.py results/lm_eval

# The robust default (results/robust): the default ensemble as `unite generate` runs it (its gate)
# and Qwen alone on the same items, then the paired tables, with the log-likelihood rules recomputed
# from results/lm_eval (resumable).  bench/bench_robust.py measures its speed.
ROBUST_EVAL = OMP_WAIT_POLICY=PASSIVE nice -n 10 $(BIN)/unite eval --task lambada --task triviaqa --task nq \
              --setting small --limit 300 --out results/robust/eval --title "Robust default (gated UniTE) vs its members" --no-progress
robust: $(STAMP)
	$(ROBUST_EVAL) -m qwen2.5-coder-1.5b-instruct --method single
	$(ROBUST_EVAL) --method unite
	$(BIN)/python bench/robust_tables.py

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

# The playground test drives Debian's chromium; install it when missing and we are root.
CHROMIUM ?= /usr/bin/chromium
browser:
	@test -x $(CHROMIUM) || { [ "$$(id -u)" = 0 ] || { echo "error: $(CHROMIUM) is missing: sudo apt-get install -y chromium" >&2; exit 1; }; \
	  export DEBIAN_FRONTEND=noninteractive; apt-get install -y -q chromium || { apt-get update -q && apt-get install -y -q chromium; }; }

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
