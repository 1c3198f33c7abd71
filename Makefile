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
MODEL ?= efficientnet_lite0
RUNS ?= runs
PYTEST_ARGS ?=

.PHONY: venv browser demo test lint format clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH_PINS)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

venv: $(BIN)/.installed

demo: venv
	$(BIN)/covidct data info --data-dir $(DATA_DIR) --no-images
	$(BIN)/covidct samples --data-dir $(DATA_DIR) --n 5 --out $(RUNS)/samples.png
	$(BIN)/covidct train --data-dir $(DATA_DIR) --model $(MODEL) --out $(RUNS) --evaluate test --report

# The report test renders report.html in Chromium (Debian's package). Installed here when we are root;
# elsewhere the test is skipped with a message, except under CI=true where it fails.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }; } || \
	  echo "chromium not installed: the browser test of the HTML report will be skipped"

test: venv browser
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check src tests benchmarks

format: venv
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache
