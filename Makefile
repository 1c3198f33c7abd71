# The two commands of the contract: `make demo` (the main job) and `make test` (the whole suite).
# Each creates .venv and installs covidct on a fresh machine first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch/torchvision first, pinned: on the project's machines this pair installs from the local wheel store.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
SHARED_DATA := ../shared/datasets/covid-ct
# --data-dir order: DATA_DIR=..., else $COVIDCT_DATA_DIR, else ../shared/datasets/covid-ct if present, else data/covid-ct
DATA_DIR ?= $(or $(COVIDCT_DATA_DIR),$(if $(wildcard $(SHARED_DATA)/Images-processed),$(SHARED_DATA),data/covid-ct))
# The second source, when present (covidct data download --source sars-cov-2-ct puts it in data/sars-cov-2-ct)
SARS_DIR ?= $(or $(COVIDCT_SOURCE_SARS_COV_2_CT),$(if $(wildcard ../shared/datasets/sars-cov-2-ct/COVID),../shared/datasets/sars-cov-2-ct,data/sars-cov-2-ct))
# The second source is scored, never trained on, by the demo (the report's "where this model has been validated")
EXTERNAL := $(if $(wildcard $(SARS_DIR)/COVID),--evaluate-on sars-cov-2-ct=$(SARS_DIR))
RECIPE ?= configs/default.yaml
MODEL ?= efficientnet_lite0
RUNS ?= runs
DEMO_RUN ?= $(RUNS)/demo-$(shell date +%Y%m%d-%H%M%S)
DEMO_ARGS ?=
PYTEST_ARGS ?=

.PHONY: venv browser rref demo test docs mutation lint format clean

# What the demo needs (covidct and torch), then the dev tools for the tests: a demo does not wait for them.
$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH_PINS)
	$(BIN)/pip install --quiet -e .
	touch $@

$(BIN)/.dev: $(BIN)/.installed
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

venv: $(BIN)/.dev

# The main job, the study's: the default recipe on COVID-CT alone (official split), the best epoch chosen on
# validation, evaluated once on the test split and printed beside the study's published figures; the
# SARS-CoV-2 CT-scan set, when present, is scored (never trained on) with its out-of-distribution share.
demo: $(BIN)/.installed
	$(BIN)/covidct data info --data-dir $(DATA_DIR) --no-images
	$(BIN)/covidct samples --data-dir $(DATA_DIR) --n 5 --out $(RUNS)/samples.png
	$(BIN)/covidct train --config $(RECIPE) --data-dir $(DATA_DIR) --model $(MODEL) --run-dir $(DEMO_RUN) \
	  --evaluate test $(EXTERNAL) --report $(DEMO_ARGS)
	$(BIN)/covidct study $(DEMO_RUN)

# The report test renders report.html in Chromium (Debian's package). Installed here when we are root;
# elsewhere the test is skipped with a message, except under CI=true where it fails.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }; } || \
	  echo "chromium not installed: the browser test of the HTML report will be skipped"

# R's pROC recomputes the statistics' reference values live (tests/evaluation/test_r_reference.py); the recorded
# values are tested without it. Installed here when we are root, else that one test is skipped.
rref:
	@command -v Rscript >/dev/null 2>&1 && Rscript -e 'library(pROC)' >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends r-base-core r-cran-proc >/dev/null; }; } || \
	  echo "R/pROC not installed: the live R reference test will be skipped"

# The quick tier first (no training, no server: a broken commit fails in about a minute), then the slow tier on
# SLOW_WORKERS processes (pytest-xdist) of one thread each: its tests spend much of their time starting
# subprocesses and servers, so two processes on 2 cores took it from 6 min to 3 min 53 s (benchmarks/RESULTS.md).
SLOW_WORKERS ?= 2
test: venv browser rref
	$(BIN)/ruff check src tests benchmarks tools docs
	$(BIN)/ruff format --check src tests benchmarks tools docs
	$(BIN)/python -m pytest -m "not slow" -x $(PYTEST_ARGS)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -m slow -n $(SLOW_WORKERS) $(PYTEST_ARGS)

# The documentation site, offline, into site/ (mkdocs-material; reference pages generated from the code, results
# from benchmarks/): --strict fails on a broken link, a missing page or an unresolved reference. CI runs it.
docs: venv
	NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true $(BIN)/mkdocs build --strict --quiet --site-dir site

# Mutation testing of the numeric core (metrics, statistics, calibration; [tool.mutmut] in pyproject.toml) and the
# planted one-line faults; a few minutes on 2 cores, so not part of `make test`: .ci/run runs it after. A survivor not
# reviewed as equivalent (tools/mutation_report.py, by mutant id and line hash) or an uncaught fault fails it.
mutation: venv
	rm -rf mutants
	$(BIN)/mutmut run --max-children 2 > /dev/null
	$(BIN)/mutmut export-cicd-stats > /dev/null
	$(BIN)/python tools/mutation_report.py
	$(BIN)/python tools/planted_faults.py

lint: venv
	$(BIN)/ruff check src tests benchmarks tools docs

format: venv
	$(BIN)/ruff format src tests benchmarks tools docs
	$(BIN)/ruff check --fix src tests benchmarks tools docs

clean:
	rm -rf $(VENV) build site src/*.egg-info .pytest_cache .ruff_cache mutants
