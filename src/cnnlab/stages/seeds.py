"""``cnnlab seeds``: train and evaluate a run once per seed; mean ± std is the headline figure."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from ..config import Config
from ..contract import RunFiles, seed_run
from ..files import write_json
from ..metrics import mean_std
from ..parallel import run_jobs, threads_per_worker
from ..runtime import machine
from .evaluate import evaluate
from .train import train


def train_and_evaluate(config: Config) -> dict[str, Any]:
    """One seed (module level: worker processes import it)."""
    print(f"== seed {config.train.seed}", flush=True)
    trained = train(config)
    evaluation = evaluate(config)
    return {"seed": config.train.seed, "test_accuracy": evaluation["test_accuracy"],
            "best_val_accuracy": trained.metrics["best_val_accuracy"],
            "best_val_loss": trained.metrics["best_val_loss"],
            "wall_seconds": trained.metrics["wall_seconds"],
            "total_parameters": trained.metrics["total_parameters"], "run_id": trained.run_id}


def seed_runs(config: Config) -> list[Config]:
    """One run per seed, ``<run>/seed<k>``; with several at once, the cores split between them."""
    workers = min(config.seed_workers, len(config.seeds))
    recipe = config.train
    if workers > 1:  # interleaved progress bars from several processes would be noise
        recipe = dataclasses.replace(recipe, threads=threads_per_worker(workers, recipe.threads), progress=False)
    return [dataclasses.replace(config, run=seed_run(config.name, seed), train=dataclasses.replace(recipe, seed=seed))
            for seed in config.seeds]


def seeds(config: Config) -> dict[str, Any]:
    """What seeds.json holds: every seed's run, test accuracy mean ± std, wall time."""
    runs_config = seed_runs(config)
    workers = min(config.seed_workers, len(runs_config))
    if workers > 1:
        print(f"seeds {config.seeds}: {workers} processes of {runs_config[0].train.threads} thread(s)", flush=True)
    started = time.perf_counter()
    runs = run_jobs(train_and_evaluate, [(c,) for c in runs_config], workers,
                    describe=lambda job: f"seed {job[0].train.seed}")
    mean, std = mean_std([r["test_accuracy"] for r in runs])
    summary = {"experiment": config.name, "seeds": config.seeds, "test_accuracy_mean": mean,
               "test_accuracy_std": std, "wall_seconds_mean": mean_std([r["wall_seconds"] for r in runs])[0],
               "seed_workers": workers, "wall_seconds_total": time.perf_counter() - started,
               "total_parameters": runs[0]["total_parameters"], "machine": machine(), "runs": runs}
    write_json(RunFiles.of(config).seeds, summary)
    print(f"{config.name}: test accuracy {100 * mean:.2f} ± {100 * std:.2f} % over seeds {config.seeds}")
    return summary
