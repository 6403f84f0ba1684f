# Two commands on a fresh machine with Python 3 and make: `make demo`, `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel where one is on disk; elsewhere PyPI's default build for the platform.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: demo test lint clean-cache

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev,formats,review,onnx,parquet,postgres,tensorboard,mlflow]"
	touch $@

demo: $(VENV)/.installed
	$(PY) -m ecgrisk.demo

test: $(VENV)/.installed
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check ecgrisk tests scripts

clean-cache:
	rm -rf .cache/ecgrisk
