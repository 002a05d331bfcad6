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
