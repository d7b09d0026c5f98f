"""How far E5's hand-designed net gets with longer training or another recipe on this CPU, and
what that costs.

    CNNLAB_DATASETS=../shared/datasets python bench/e5_epochs.py --epochs 50 70 \
        [--variant NAME SETTING...] [--winner NAME SEARCH_JSON SETTING...] [--experiment e5_search] \
        [--out bench/e5_epochs.json]
                                                                          # or: make bench-e5-epochs

Issue #16 asks for >= 91% CIFAR-10 test accuracy (mean of 3 seeds, <= 150,000 parameters) with
the search and the retraining together in <= 2.5 h on this 2-core CPU; the entry's own net and
recipe score what its outputs/<entry>/seeds.json holds (quoted in the result). This trains the
entry once per ``--epochs`` value (run ``epochs<E>``: only ``train.epochs`` replaced) and once per
``--variant`` (run NAME: the entry with those ``-S`` settings, e.g. another optimizer or model)
and once per ``--winner`` (run NAME: a study's winner as `cnnlab retrain-best` retrains it, then
those settings, e.g. more epochs), seed 0, all at once in processes of one thread each as `cnnlab seeds` runs seeds, with the real
commands (``cnnlab train`` then ``cnnlab evaluate``) on the whole training split in a scratch
folder (once the shorter runs end, the longest trains alone). Per run it records the best
validation accuracy (what a choice would use), the test accuracy (reported only), the training
wall time and seconds per epoch, and projects what 3 seeds of that length cost at this speed (two
at once, then the third), the time left to a search in 2.5 h.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from scratch_project import ROOT, cli_command, entry_settings, prepare_scratch, scratch_settings

from cnnlab.config import ConfigError, load_config
from cnnlab.contract import RunFiles, SeedFiles
from cnnlab.runtime import machine

BUDGET_HOURS = 2.5  # issue #16: search plus retraining
SEEDS = 3  # issue #16: the mean of 3 seeds
AT_ONCE = 2  # seeds trained at once in the projection (one per core)


def commands(config_args: list[str], name: str, run_settings: list[str], workdir: Path) -> str:
    """Train, then evaluate, run ``name`` on one thread (a shell line)."""
    settings = [*config_args, *scratch_settings(workdir), *run_settings, "train.threads=1", "train.seed=0",
                f"run={name}"]
    return " && ".join(shlex.join(cli_command(step, settings)) for step in ("train", "evaluate"))


def winner_settings(config_args: list[str], config, search_json: Path) -> tuple[list[str], int]:
    """The ``-S`` settings that make the entry a study's winner, as `cnnlab retrain-best` makes it
    (winner_config: the winner's net and searched recipe on the entry's training), and the winner's
    trial number; checked against winner_config, so the two cannot drift apart."""
    from cnnlab.selection import search_winner
    from cnnlab.stages.search import winner_config  # the stages' imports: only when a winner is asked for

    best = search_winner(json.loads(search_json.read_text()))
    recipe = {key: value for key, value in best["training"].items() if key != "augment"}
    settings = ["model.name=search_cnn", "model.kwargs=" + json.dumps(best["model_kwargs"]),
                *(f"train.{key}={json.dumps(value)}" for key, value in recipe.items()),
                *(f"train.augment.{key}={json.dumps(value)}" for key, value in best["training"].get("augment", {}).items())]
    expected = winner_config(config, best)
    loaded = load_config(ROOT / "params.yaml", [*config_args, *settings, f"run={expected.run}"])
    if (loaded.model, loaded.train) != (expected.model, expected.train):
        raise ConfigError(f"the settings made of {search_json}'s winner train another net or recipe than retrain-best")
    return settings, best["number"]


def seeds_epochs(config) -> int:
    """The epochs the entry's committed seeds trained, from the first seed's own config.yaml: the
    entry may have changed its epochs since they ran."""
    return yaml.safe_load((SeedFiles.of(config).seed_runs[0] / "config.yaml").read_text())["train"]["epochs"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", default="e5_search")
    parser.add_argument("--epochs", type=int, nargs="*", default=[50, 70],
                        help="entry runs of these lengths, named epochs<E>")
    parser.add_argument("--variant", nargs="+", action="append", default=[], metavar=("NAME", "SETTING"),
                        help="a run named NAME: the entry with these -S settings (repeatable)")
    parser.add_argument("--winner", nargs="+", action="append", default=[], metavar=("NAME", "SEARCH_JSON"),
                        help="a run named NAME: the winner of that search.json as retrain-best trains it, "
                             "then these -S settings (repeatable)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "e5_epochs.json"))
    args = parser.parse_args()
    entry = entry_settings(args.experiment)
    if entry is None:
        return 2
    config_args, config = entry
    runs_settings = {f"epochs{epochs}": [f"train.epochs={epochs}"] for epochs in args.epochs}
    runs_settings.update({name: settings for name, *settings in args.variant})
    winners = {}  # run name: the study's winner it starts from, and the settings on top of that winner
    try:  # a bad setting stops here, before anything trains
        for name, search_json, *settings in args.winner:
            start, trial = winner_settings(config_args, config, Path(search_json))
            runs_settings[name] = [*start, *settings]
            winners[name] = ({"search": search_json, "trial": trial}, settings)
        run_configs = {name: load_config(ROOT / "params.yaml", [*config_args, *settings, f"run={name}"])
                       for name, settings in runs_settings.items()}
    except (ConfigError, OSError) as error:  # OSError: no such search.json
        print(f"bad run setting: {error}", file=sys.stderr)
        return 2
    committed = RunFiles.of(config).seeds
    load_before = os.getloadavg()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        train_images = prepare_scratch(config, workdir)
        started = time.perf_counter()
        processes = {name: subprocess.Popen(["bash", "-c", commands(config_args, name, settings, workdir)],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)
                     for name, settings in runs_settings.items()}
        for name, process in processes.items():
            _, stderr = process.communicate()
            if process.returncode != 0:
                print(f"{name} failed ({process.returncode}):\n{stderr[-3000:]}", file=sys.stderr)
                return 1
            out = workdir / "outputs" / name
            epochs = run_configs[name].train.epochs
            train = json.loads((out / "train_metrics.json").read_text())
            evaluation = json.loads((out / "eval.json").read_text())
            history = json.loads((out / "history.json").read_text())
            seconds_per_epoch = train["wall_seconds"] / epochs
            seeds_hours = math.ceil(SEEDS / AT_ONCE) * epochs * seconds_per_epoch / 3600
            runs.append({
                "run": name, "winner": winners[name][0] if name in winners else None,
                "settings": winners[name][1] if name in winners else runs_settings[name],
                "model": run_configs[name].model.name,
                "model_kwargs": run_configs[name].model.kwargs, "epochs": epochs, "best_val_accuracy": train["best_val_accuracy"], "best_epoch": train["best_epoch"],
                "test_accuracy": evaluation["test_accuracy"],
                "test_accuracy_without_tta": evaluation.get("test_accuracy_without_tta"),
                "total_parameters": train["total_parameters"], "train_wall_seconds": train["wall_seconds"],
                "seconds_per_epoch": seconds_per_epoch,
                "val_accuracy_by_epoch": [round(h["val_accuracy"], 4) for h in history],
                "projected_hours_for_3_seeds": round(seeds_hours, 3),
                "hours_left_for_search_in_2_5": round(BUDGET_HOURS - seeds_hours, 3)})
            print(f"{name} ({epochs} epochs): val {train['best_val_accuracy']:.4f}, test {evaluation['test_accuracy']:.4f}, "
                  f"{seconds_per_epoch:.1f} s/epoch; 3 seeds ~{seeds_hours:.2f} h", flush=True)
        wall = time.perf_counter() - started
    reference = json.loads(committed.read_text()) if committed.exists() else None
    result = {
        "command": "python bench/e5_epochs.py " + " ".join(sys.argv[1:]),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "load_average_1min": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
        "workload": {"experiment": args.experiment, "model": config.model.name, "model_kwargs": config.model.kwargs,
                     "recipe": "the entry's settings, with each run's settings on top; seed 0",
                     "train_images": train_images, "processes_at_once": len(runs_settings),
                     "threads_per_process": 1},
        "wall_seconds": wall,
        "runs": runs,
        "entry_seeds": None if reference is None else {
            "source": str(committed), "epochs": seeds_epochs(config),
            "test_accuracy_mean": reference["test_accuracy_mean"], "test_accuracy_std": reference["test_accuracy_std"]},
        "target": {"test_accuracy": 0.91, "hours": BUDGET_HOURS, "seeds": SEEDS,
                   "projection": f"{SEEDS} seeds, {AT_ONCE} at once, at each run's measured seconds per epoch"},
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
