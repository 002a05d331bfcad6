# Quick start: `make demo` (train on the synthetic data set, CPU) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# timm needs torchvision, and the PyPI torchvision works only with its matching torch
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: install demo test lint format baselines bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/mtlora fit --config configs/demo.yaml

# every Table-1 baseline on synthetic data (CPU, ~10-15 min), then runs/baselines -> reports/baselines/
baselines: install
	$(PY) scripts/run_baselines.py --out runs/baselines --report reports/baselines

# mtlora bench, standard setting (cuda: 448, batch 32, bf16, counted as it runs; otherwise + counts at 448/32/bf16) -> benchmarks/RESULTS.md
BENCH_DEVICE ?= cuda
bench: install
	$(PY) benchmarks/run_bench.py --device $(BENCH_DEVICE) $(if $(filter cuda,$(BENCH_DEVICE)),,--count-at 448) --update-results

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check mtlora tests benchmarks scripts
	$(VENV)/bin/ruff format --check mtlora tests benchmarks scripts

format: install
	$(VENV)/bin/ruff format mtlora tests benchmarks
	$(VENV)/bin/ruff check --fix mtlora tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
