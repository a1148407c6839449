# Two commands:  `make run` (set up, run the whole pipeline)  and  `make test`.
# torch is installed first and pinned, so pip never swaps in another build:
#   make run TORCH_SPEC=torch==2.13.0 TORCH_INDEX=https://download.pytorch.org/whl/cpu
# gives a CPU-only build on machines where PyPI's default is the CUDA one.
VENV ?= .venv
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: setup run flow test test-fast lint bench

setup: $(VENV)/.installed
	python -m tasks.offline_plots   # vega inlined: plots render offline (no npm: DVC's CDN page, and a line)

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m tasks.training.ops   # DeepSpeed's CPU op, compiled once here rather than by racing ranks
	touch $@

run: setup          ## the whole pipeline on the default data, by DVC
	dvc repro
	dvc metrics show
	python -m tasks.registry list

flow: setup         ## the same DAG as a Prefect flow on the embedded server
	python -m flows.pipeline

# two workers, one test file each (module fixtures stay in one process): a third faster on 2 cores
PYTEST_WORKERS ?= 2

test: setup         ## every test, the slow end-to-end ones included
	python -m pytest -n $(PYTEST_WORKERS) --dist loadfile

test-fast: setup
	python -m pytest -m "not slow"

lint: setup
	ruff check .

bench: setup
	python benchmarks/pipeline_runs.py
