# Two commands get a working set-up:  make demo  and  make test.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: demo test test-fast install bench lint clean-stores

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# torch/torchvision first and alone: pip serves 2.14.1/0.29.1 from local disk when capped.
$(STAMP): $(BIN)/python pyproject.toml requirements.lock
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -c requirements.lock -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

## demo: install, then run the main pipeline (E1) with DVC; offline it uses embedded MNIST digits
demo: install
	@test -d .git || git init -q
	dvc repro
	@echo
	@cat outputs/*/eval.json | head -5
	@echo "Next: mlflow ui --backend-store-uri sqlite:///$(CURDIR)/.mlflow/mlflow.db   |   dvc exp show"

## test: the whole suite (slow tests included)
test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

bench: install
	$(BIN)/python bench/train_throughput.py

## clean-stores: delete the local MLflow store and Optuna storage (irreversible)
clean-stores:
	rm -rf .mlflow .optuna
