"""The stage contract: dvc.yaml is what the contract generates, and every stage reads and imports
only what it declares (checked by running each stage on tiny data under a tracer)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cnnlab.config import catalogue_for, load_config
from cnnlab.contract import (STAGES, SWEEPS, UNTRACKED_KEYS, RunFiles, compare_inputs, comparison_files, expand,
                             file_paths, group_files, group_inputs, group_members, stage)
from cnnlab.data import DATASETS_ENV
from cnnlab.dvcgen import file_deps, generated

from .conftest import PROJECT_ROOT


def test_committed_dvc_yaml_files_are_the_generated_ones():
    for path, text in generated(PROJECT_ROOT).items():
        assert path.read_text() == text, f"{path} differs from the stage contract: run `cnnlab dvc-yaml`"


def test_every_quoted_seeds_file_has_a_stage_and_the_main_pipeline_trains_once():
    """E1's seeds.json (quoted in the README) is a catalogue-pipeline stage of its own: a
    `dvc exp run` of the main pipeline trains one model, not one per seed as well."""
    pipelines = {path.relative_to(PROJECT_ROOT).as_posix(): yaml.safe_load(text)["stages"]
                 for path, text in generated(PROJECT_ROOT).items()}
    assert not any(name.startswith("seeds") for name in pipelines["dvc.yaml"])
    declared = {next(iter(out)) for entry in pipelines["experiments/dvc.yaml"].values()
                for out in entry.get("metrics", [])}
    committed = {path.relative_to(PROJECT_ROOT).as_posix() for path in (PROJECT_ROOT / "outputs").glob("*/seeds.json")}
    assert "outputs/e1_mnist_simple_cnn/seeds.json" in committed and committed <= declared


def test_each_seeds_run_and_what_compare_reads_are_declared():
    """Per-seed runs are stage outputs (not files DVC knows nothing of), and compare depends on
    the results it reads instead of running always, so `dvc status` says when its table is stale."""
    stages = yaml.safe_load((PROJECT_ROOT / "experiments" / "dvc.yaml").read_text())["stages"]
    seeds = stages["seeds-e1_fast"]
    assert {"outputs/e1_fast/seed0": {"cache": False}} in seeds["outs"] and "models/e1_fast/seed2" in seeds["outs"]
    winner_outs = [next(iter(o)) if isinstance(o, dict) else o for o in stages["retrain_best-e5_search"]["outs"]]
    assert "outputs/e5_search_winner/seed1" in winner_outs
    control_outs = [next(iter(o)) if isinstance(o, dict) else o for o in stages["retrain_control-e5_search"]["outs"]]
    assert "models/e5_search_random_winner" in control_outs
    compare = stages["compare"]
    assert "always_changed" not in compare
    assert {"outputs/e1_fast/seeds.json", "outputs/e1_fast/seed0/history.json", "outputs/e2_cifar10_alexnet/eval.json",
            "outputs/e6_finetune/freeze_sweep.json", "outputs/e5_search/seeds.json"} <= set(compare["deps"])


def test_results_free_settings_are_not_dvc_params():
    params = set(STAGES["train"].params())
    assert {"train.lr", "data.train_subset", "data.classes", "transfer.policy", "train.augment"} <= params
    assert not {"train.threads", "train.progress", "tracking.uri", "seed_workers"} & params


def test_catalogue_entries_bring_their_own_and_inherited_sections():
    tree = yaml.safe_load((PROJECT_ROOT / "experiments" / "dvc.yaml").read_text())["stages"]
    params = tree["train-e3_cifar_k3_s2"]["params"]
    assert {"catalogue.yaml": ["bases.cifar10.data", "bases.e3_cifar.model", "bases.e3_cifar.train",
                               "experiments.e3_cifar_k3_s2.model"]} in params
    evaluate = tree["evaluate-e3_cifar_k3_s2"]["params"][-1]["catalogue.yaml"]
    assert "bases.e3_cifar.model" not in evaluate  # evaluate rebuilds the model from the checkpoint
    assert "models/e6_pretrain_digits/best.pt" in tree["train-e6_finetune"]["deps"]  # transfer.init_from
    assert "src/cnnlab/augment.py" in tree["train-e2_cifar10_alexnet"]["deps"]
    assert "src/cnnlab/report.py" not in tree["train-e2_cifar10_alexnet"]["deps"]


def test_every_declared_key_is_a_setting():
    for spec in (*STAGES.values(), *SWEEPS.values()):
        for key in (*spec.reads, *spec.skip):
            assert expand(key), key
    for key in UNTRACKED_KEYS:
        assert expand(key)


def module_path(module: str) -> str:
    parts = module.split(".")[1:]
    base = PROJECT_ROOT / "src" / "cnnlab" / "/".join(parts)
    path = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
    return path.relative_to(PROJECT_ROOT).as_posix()


def declared_code(spec) -> set[str]:
    return set(spec.code())


def covered_by_code(path: str, code: set[str]) -> bool:
    if not (PROJECT_ROOT / path).exists():  # a namespace package (cnnlab itself) runs no code
        return True
    return path in code or any(path.startswith(entry + "/") for entry in code)


def declared_files(name: str, config, params, overrides) -> tuple[list[Path], list[Path]]:
    """The files stage ``name`` declares it reads and writes, as dvc.yaml names them."""
    if name == "compare":
        return compare_inputs(params, overrides), list(comparison_files(config))
    if name == "separability":
        return group_inputs(config, group_members(catalogue_for(params), "probe")), list(group_files(config, "probe"))
    spec = stage(name)
    # dvcgen gives train and each sweep the checkpoint their settings start from
    starts = [Path(f) for f in file_deps(config)] if name == "train" or name in SWEEPS else []
    return ([p for field in spec.inputs for p in file_paths(config, field)] + starts,
            [p for output in spec.outputs for p in file_paths(config, output.file)])


def within(path: str, declared: list[Path]) -> bool:
    resolved = Path(path).resolve()
    return any(resolved == d.resolve() or d.resolve() in resolved.parents for d in declared)


# Every stage, in an order where each finds what it reads; overrides shrink it to seconds.
PROBES = ("prepare", "train", "evaluate", "analyze", "report", "export", "register", "seeds", "freeze_sweep",
          "search", "search_report", "retrain_best", "search_control", "retrain_control", "search_compare",
          "separability", "compare")


@pytest.mark.slow
def test_every_stage_reads_and_imports_only_what_it_declares(tmp_path, tracking_uri):
    params = tmp_path / "params.yaml"
    params.write_text((PROJECT_ROOT / "params.yaml").read_text())
    catalogue = yaml.safe_load((PROJECT_ROOT / "catalogue.yaml").read_text())
    catalogue["experiments"]["e1_mnist_simple_cnn"]["reference"]["group"] = "probe"
    (tmp_path / "catalogue.yaml").write_text(yaml.safe_dump(catalogue))
    overrides = [
        f"models_dir={tmp_path / 'models'}", f"outputs_dir={tmp_path / 'outputs'}",
        f"data.prepared_dir={tmp_path / 'prepared'}", "data.download=false", "data.train_subset=600",
        "train.epochs=1", "train.progress=false", f"tracking.uri={tracking_uri}",
        f"tracking.experiment=probe-{tmp_path.name}", "analysis.tsne_points=200", "seeds=[0, 1]",
        f"search.storage=sqlite:///{tmp_path / 'optuna.db'}", f"search.study=probe-{tmp_path.name}",
        "search.n_trials=1", "search.trial_epochs=1", "search.trial_train_subset=300", "search.epoch_budget=1",
        "search.space.stages=[2, 2]", "search.space.widths=[8]", "search.space.block_styles=[plain]",
        f"transfer.init_from={tmp_path / 'models' / 'e1_mnist_simple_cnn' / 'best.pt'}", "transfer.sweep_k=[0, 1]",
    ]
    # the probe module beside whatever the runner already imports cnnlab from (a worktree's src/);
    # no datasets directory: the stages train on the embedded digits, so the many fits of the seeds,
    # the freeze sweep and both retrainings score 1,000 test digits each, not MNIST's 10,000
    env = {**{k: v for k, v in os.environ.items() if k != DATASETS_ENV},
           "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))}
    # freeze_sweep alone fine-tunes from a checkpoint: the others train from scratch
    plan = [{"stage": name, "out": str(tmp_path / f"{name}.json"), "params": str(params), "group": "probe",
             "overrides": [a for a in overrides if name == "freeze_sweep" or not a.startswith("transfer.")]}
            for name in PROBES]
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    result = subprocess.run([sys.executable, "-m", "tests.stage_probe", str(tmp_path / "plan.json")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, f"a stage failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    problems = []
    for name in PROBES:
        spec = stage(name)
        probe = json.loads((tmp_path / f"{name}.json").read_text())
        undeclared_reads = [key for key in probe["reads"] if not spec.covers(key)]
        code = declared_code(spec)
        undeclared_modules = [m for m in probe["modules"] if not covered_by_code(module_path(m), code)]
        if undeclared_reads or undeclared_modules:
            problems.append(f"{name}: reads {undeclared_reads}, imports {undeclared_modules}")
        if name == "train":  # the tracer sees real reads
            assert {"train.lr", "data.train_subset", "transfer.policy", "train.augment.hflip"} <= set(probe["reads"])
    for step in plan:
        config = load_config(params, step["overrides"])
        inputs, outputs = declared_files(step["stage"], config, params, step["overrides"])
        probe = json.loads(Path(step["out"]).read_text())
        read = [p for p in probe["opened"] if not within(p, [*inputs, *outputs])]
        written = [p for p in probe["written"] if not within(p, outputs) and Path(p).name != "timings.json"]
        if read or written:
            problems.append(f"{step['stage']}: reads files {read}, writes files {written}")
        if step["stage"] == "compare":  # the tracer sees real file reads
            assert any(p.endswith("e1_mnist_simple_cnn/seed0/history.json") for p in probe["opened"])
    assert not problems, "undeclared in cnnlab/contract.py:\n" + "\n".join(problems)
    files = RunFiles.of(load_config(params, [f"outputs_dir={tmp_path / 'outputs'}"]))
    assert files.report.exists() and (tmp_path / "outputs" / "probe" / "separability.json").exists()
