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

# every Table-1 run (both adapter settings) on synthetic data from a stand-in backbone (CPU, tens of minutes),
# Δm against measured single-task runs; runs/baselines/table1 -> reports/baselines/table1.{md,csv,png}
baselines: install
	OMP_NUM_THREADS=1 $(VENV)/bin/mtlora sweep --experiment table1 --out runs/baselines \
		--override configs/baselines/synthetic.yaml --standin_epochs 8 --reference measured
	$(VENV)/bin/mtlora report --experiment table1 --runs runs/baselines/table1 --out reports/baselines

# mtlora bench, standard setting (cuda: 448, batch 32, bf16, counted as it runs; otherwise + counts at 448/32/bf16) -> benchmarks/RESULTS.md
BENCH_DEVICE ?= cuda
bench: install
	$(PY) benchmarks/run_bench.py --device $(BENCH_DEVICE) $(if $(filter cuda,$(BENCH_DEVICE)),,--count-at 448) --update-results

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check mtlora tests benchmarks
	$(VENV)/bin/ruff format --check mtlora tests benchmarks

format: install
	$(VENV)/bin/ruff format mtlora tests benchmarks
	$(VENV)/bin/ruff check --fix mtlora tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
