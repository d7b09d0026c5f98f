"""Fault injection: kill -9 at random points, byte flips in every file the stages meet in, and a
wrong value for every setting; after each, the next command must recover and nothing finished
may be lost.

    python bench/faults.py --faults 12 --seed 0 --out bench/faults.json    # `make faults`

Everything runs in a scratch project under a temporary folder (the embedded 5,000 MNIST digits,
a 2-epoch recipe, SQLite stores), driven through real `cnnlab` processes. After each fault the
checks are: the command that follows succeeds (or fails with one clear line, exit 2, when its
input is corrupt), no MLflow run is left RUNNING, every run that had FINISHED still has, every
checkpoint that existed still loads (its hashes verified), every finished Optuna trial is still
there with its value, and no result file was overwritten by a command that read a corrupt input.
A flip the code cannot notice (a changed value in a SQLite row) is reported as "undetected",
never as survived. tests/test_faults.py runs a fixed subset of the same functions in CI.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import typing
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

# The tiny recipe every fault runs: 1,000 of the embedded digits, 2 epochs, no progress bars.
EPOCHS = 2
RECIPE = ["data.name=mnist_digits", "data.train_subset=1000", f"train.epochs={EPOCHS}", "train.progress=false",
          "analysis.tsne_points=200"]
# A search of 3 one-epoch trials on 300 images over a tiny space (tests/test_search.py's).
# Heartbeats every second: the next invocation fails a killed worker's trial at once instead
# of after the default two minutes.
TINY_SEARCH = [
    "search.space.block_styles=[plain, residual]", "search.space.stages=[2, 2]", "search.space.widths=[8, 16]",
    "search.space.convs_per_block=[1, 1]", "search.space.head_widths=[0]", "search.space.dropout=[0.0, 0.0]",
    "search.space.optimizers=[adam]", "search.space.lr=[0.001, 0.003]", "search.trial_epochs=1",
    "search.trial_train_subset=300", "search.n_trials=3", "search.enqueue=[]", "search.heartbeat_seconds=1",
]
BASE_RUN = "base"  # the trained, evaluated and exported run that file faults corrupt copies of
CLEAR_ERROR_EXIT = 2
COMMAND_TIMEOUT_S = 600


@dataclass
class FaultRecord:
    kind: str
    target: str
    seed: int
    when: str  # the kill point or the flipped offset
    outcome: str  # "survived" | "failed" | "undetected"
    data_lost: bool
    note: str = ""


@dataclass
class Snapshot:
    """What must survive a fault: finished runs, loadable checkpoints, finished trials, versions."""

    finished_runs: set[str] = field(default_factory=set)
    checkpoints: list[Path] = field(default_factory=list)
    trials: dict[tuple[str, int], tuple[str, Any]] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)


class Project:
    """A scratch cnnlab project under ``root``: one MLflow store, one Optuna storage, one
    prepared dataset, every run's files in root/models and root/outputs."""

    def __init__(self, root: Path):
        self.root = root
        self.store = root / "mlflow.db"
        self.optuna = root / "optuna.db"
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self._commands = 0

    def settings(self, run: str, *extra: str, store: Path | None = None, optuna_db: Path | None = None) -> list[str]:
        return [f"models_dir={self.root / 'models'}", f"outputs_dir={self.root / 'outputs'}",
                f"data.prepared_dir={self.root / 'prepared'}", f"data.raw_dir={self.root / 'raw'}",
                f"tracking.uri=sqlite:///{store or self.store}", "tracking.experiment=faults",
                f"search.storage=sqlite:///{optuna_db or self.optuna}", *RECIPE, f"run={run}", *extra]

    def argv(self, command: str, run: str, *extra: str, **stores: Path) -> list[str]:
        overrides = [word for setting in self.settings(run, *extra, **stores) for word in ("-S", setting)]
        return [sys.executable, "-m", "cnnlab.cli", command, "--params", str(ROOT / "params.yaml"), *overrides]

    @staticmethod
    def env() -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID",
                                                                  "CNNLAB_DEBUG")}
        return {**env, "PYTHONPATH": str(SRC), "PYTHONUNBUFFERED": "1"}

    def start(self, command: str, run: str, *extra: str, **stores: Path) -> tuple[subprocess.Popen, Path]:
        """The command in a process of its own; stdout and stderr go to a log file (returned)."""
        self._commands += 1
        log = self.logs / f"{self._commands:03d}-{command}.log"
        with open(log, "w") as handle:
            process = subprocess.Popen(self.argv(command, run, *extra, **stores), stdout=handle,
                                       stderr=subprocess.STDOUT, env=self.env(), cwd=self.root)
        return process, log

    def run(self, command: str, run: str, *extra: str, **stores: Path) -> tuple[int, str]:
        """Exit code and output (stdout and stderr together) of one command run to its end."""
        process, log = self.start(command, run, *extra, **stores)
        try:
            code = process.wait(COMMAND_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
        return code, log.read_text()

    def model_dir(self, run: str) -> Path:
        return self.root / "models" / run

    def output_dir(self, run: str) -> Path:
        return self.root / "outputs" / run

    def prepared(self) -> Path:
        return self.root / "prepared" / "mnist_digits.pt"

    def client(self, store: Path | None = None):
        from mlflow import MlflowClient

        uri = f"sqlite:///{store or self.store}"
        return MlflowClient(tracking_uri=uri, registry_uri=uri)

    def runs(self) -> list:
        client = self.client()
        experiments = [e.experiment_id for e in client.search_experiments()]
        return client.search_runs(experiments, max_results=50000) if experiments else []

    def studies(self) -> list:
        import optuna

        if not self.optuna.exists():
            return []
        storage = f"sqlite:///{self.optuna}"
        return [optuna.load_study(study_name=s.study_name, storage=storage)
                for s in optuna.get_all_study_summaries(storage)]

    def snapshot(self) -> Snapshot:
        runs = self.runs() if self.store.exists() else []
        trials = {(study.study_name, t.number): (t.state.name, t.values)
                  for study in self.studies() for t in study.get_trials(deepcopy=False)
                  if t.state.name in ("COMPLETE", "PRUNED", "FAIL")}
        versions = {}
        if self.store.exists():
            for model in self.client().search_registered_models():
                versions[model.name] = len(self.client().search_model_versions(f"name = '{model.name}'"))
        return Snapshot({r.info.run_id for r in runs if r.info.status == "FINISHED"},
                        sorted((self.root / "models").rglob("*.pt")), trials, versions)

    def losses(self, before: Snapshot) -> list[str]:
        """What ``before`` held that is gone or no longer intact."""
        from cnnlab.checkpoint import CheckpointError, load_checkpoint

        after = self.snapshot()
        lost = [f"run {r} no longer FINISHED" for r in sorted(before.finished_runs - after.finished_runs)]
        for path in before.checkpoints:
            try:
                load_checkpoint(path)
            except CheckpointError as err:
                lost.append(f"checkpoint lost: {err}")
        lost += [f"trial {study}#{number} {state} {values} is now {after.trials.get((study, number))}"
                 for (study, number), (state, values) in before.trials.items()
                 if after.trials.get((study, number)) != (state, values)]
        lost += [f"registered model {name} went from {count} to {after.versions.get(name, 0)} versions"
                 for name, count in before.versions.items() if after.versions.get(name, 0) < count]
        return lost

    def orphans(self) -> list[str]:
        """Runs still RUNNING once every command has ended: nobody will ever end them."""
        return [f"run {r.info.run_id} ({r.info.run_name}) left RUNNING" for r in self.runs()
                if r.info.status == "RUNNING"]


def clear_error(code: int, output: str, *names: str) -> str:
    """"" when the command failed as it should (exit 2, one error line naming ``names``, no
    traceback), else what was wrong."""
    if code != CLEAR_ERROR_EXIT:
        return f"exit {code}, expected {CLEAR_ERROR_EXIT}: {tail(output)}"
    if "Traceback" in output:
        return f"a traceback: {tail(output)}"
    errors = [line for line in output.splitlines() if ": error: " in line]
    if len(errors) != 1:
        return f"{len(errors)} error lines: {tail(output)}"
    missing = [name for name in names if name not in errors[0]]
    return f"the error does not name {missing}: {errors[0]}" if missing else ""


def tail(output: str, lines: int = 4) -> str:
    return " | ".join(output.strip().splitlines()[-lines:])


def record(kind: str, target: str, seed: int, when: str, problems: list[str], lost: list[str],
           note: str = "", undetected: bool = False) -> FaultRecord:
    outcome = "failed" if problems or lost else "undetected" if undetected else "survived"
    return FaultRecord(kind, target, seed, when, outcome, bool(lost), "; ".join([*problems, *lost]) or note)


# --- setting up ------------------------------------------------------------------------------
def prepare_project(root: Path) -> Project:
    """The scratch project with the prepared dataset and the base run trained (its model logged),
    evaluated and exported; not yet registered."""
    project = Project(root)
    for command, extra in (("prepare", ()), ("train", ("tracking.log_model=true",)), ("evaluate", ()),
                           ("export", ())):
        code, output = project.run(command, BASE_RUN, *extra)
        if code:
            raise RuntimeError(f"setting up the fault project: `cnnlab {command}` exited {code}: {tail(output, 20)}")
    return project


def run_search(project: Project, study: str, *extra: str) -> None:
    code, output = project.run("search", BASE_RUN, f"search.study={study}", *TINY_SEARCH, *extra)
    if code:
        raise RuntimeError(f"setting up the search: exited {code}: {tail(output, 20)}")


# --- kill -9 ---------------------------------------------------------------------------------
def wait_for(condition: Callable[[], bool], process: subprocess.Popen, timeout: float = 300) -> bool:
    """Poll until ``condition`` holds (True) or the process ends first (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if process.poll() is not None:
            return condition()
        time.sleep(0.1)
    return False


def sigkill(pid: int) -> bool:
    try:
        os.kill(pid, signal.SIGKILL)
        return True
    except ProcessLookupError:
        return False


def epoch_lines(log: Path) -> int:
    return sum(line.startswith("epoch ") for line in log.read_text().splitlines())


def kill_train(project: Project, seed: int, epochs_before: int | None = None, delay: float | None = None,
               run: str | None = None) -> FaultRecord:
    """kill -9 `cnnlab train` after ``epochs_before`` epoch lines and ``delay`` seconds (drawn
    from ``seed`` when None); then resume from last.pt (or start again) and check."""
    from cnnlab.checkpoint import load_checkpoint

    rng = random.Random(seed)
    epochs_before = rng.randint(0, EPOCHS - 1) if epochs_before is None else epochs_before
    delay = round(rng.uniform(0, 3), 2) if delay is None else delay
    run = run or f"kill-train-{seed}"
    before = project.snapshot()
    process, log = project.start("train", run)
    wait_for(lambda: epoch_lines(log) >= epochs_before, process)
    time.sleep(delay)
    killed = sigkill(process.pid)
    process.wait()
    when = f"after {epoch_lines(log)} epoch line(s) + {delay}s" + ("" if killed else " (it had ended)")
    last = project.model_dir(run) / "last.pt"
    # What the interrupted line of a SIGTERM'd train says: resume from last.pt, or start again
    # when it holds every epoch (killed while recording results) or there is none yet.
    resume = [f"train.resume_from={last}"] if last.exists() and load_checkpoint(last)["epoch"] < EPOCHS else []
    code, output = project.run("train", run, *resume)
    problems = [] if code == 0 else [f"the next train exited {code}: {tail(output)}"]
    problems += project.orphans()
    problems += finished_run_check(project, run)
    note = "resumed from last.pt" if resume else \
        "started again (last.pt held every epoch)" if last.exists() else "started again (no last.pt yet)"
    return record("kill -9", "train", seed, when, problems, project.losses(before), note)


def finished_run_check(project: Project, run: str) -> list[str]:
    """The run that run.json points at ended FINISHED."""
    info = project.output_dir(run) / "run.json"
    if not info.exists():
        return [f"{info} missing after a successful train"]
    status = project.client().get_run(json.loads(info.read_text())["run_id"]).info.status
    return [] if status == "FINISHED" else [f"run.json points at a {status} run"]


def finished_trials(project: Project, study: str) -> int:
    from cnnlab.search import stored_study

    try:
        trials = stored_study(study, f"sqlite:///{project.optuna}").get_trials(deepcopy=False)
    except KeyError:  # the study is not created yet
        return 0
    return sum(t.state.name in ("COMPLETE", "PRUNED", "FAIL") for t in trials)


def search_workers(process: subprocess.Popen) -> list[int]:
    """The pids of the worker processes a `cnnlab search -S search.workers=2` started (its
    spawned children that run trials, not multiprocessing's resource tracker)."""
    try:
        import psutil

        children = [(c.pid, " ".join(c.cmdline())) for c in psutil.Process(process.pid).children()]
    except ImportError:
        pids = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout.split()
        children = [(int(p), Path(f"/proc/{p}/cmdline").read_text().replace("\0", " ")) for p in pids]
    except Exception:  # noqa: BLE001 - the process ended meanwhile
        return []
    return [pid for pid, cmdline in children if "resource_tracker" not in cmdline]


def kill_search(project: Project, seed: int, workers: int = 1, trials_before: int | None = None,
                delay: float | None = None) -> FaultRecord:
    """kill -9 the `cnnlab search` coordinator (workers=1) or one of its 2 worker processes,
    after ``trials_before`` finished trials and ``delay`` seconds; then run the same search
    again: it must finish its trials, keep the finished ones and leave nothing RUNNING."""
    from cnnlab.search import stored_study

    rng = random.Random(seed)
    trials_before = rng.randint(0, 1) if trials_before is None else trials_before
    delay = round(rng.uniform(0, 2), 2) if delay is None else delay
    study = f"kill-search-{seed}-w{workers}"
    extra = [f"search.study={study}", *TINY_SEARCH, f"search.workers={workers}"]
    process, log = project.start("search", BASE_RUN, *extra)
    if workers > 1:
        wait_for(lambda: len(search_workers(process)) >= workers, process)
    wait_for(lambda: finished_trials(project, study) >= trials_before, process)
    time.sleep(delay)
    before = project.snapshot()
    targets = search_workers(process)[:1] if workers > 1 else [process.pid]
    killed = bool(targets) and sigkill(targets[0])
    target = "search worker" if workers > 1 else "search coordinator"
    process.wait()
    when = f"after {finished_trials(project, study)} finished trial(s) + {delay}s" + ("" if killed else " (it had ended)")
    time.sleep(2.5)  # past the heartbeat grace period (2 x 1 s): the next invocation fails the dead trial
    code, output = project.run("search", BASE_RUN, *extra)
    problems = [] if code == 0 else [f"the next search exited {code}: {tail(output)}"]
    problems += project.orphans()
    trials = stored_study(study, f"sqlite:///{project.optuna}").get_trials(deepcopy=False)
    problems += [f"trial {t.number} left RUNNING" for t in trials if t.state.name == "RUNNING"]
    if finished_trials(project, study) < 3:
        problems.append(f"only {finished_trials(project, study)} of 3 trials finished after the rerun")
    return record("kill -9", target, seed, when, problems, project.losses(before),
                  f"rerun finished the study ({len(trials)} trials in all)")


def kill_stage(project: Project, seed: int, command: str, delay: float | None = None,
               onnx_written: bool | None = None) -> FaultRecord:
    """kill -9 `cnnlab export` or `cnnlab register` of the base run after ``delay`` seconds (for
    export, or once it has rewritten model.onnx, before its parity check), then run it again: it
    must succeed, record a passed parity check, and the run must have exactly one registered version."""
    rng = random.Random(seed)
    delay = round(rng.uniform(0.5, 9), 2) if delay is None else delay
    onnx_written = command == "export" and rng.random() < 0.5 if onnx_written is None else onnx_written
    onnx = project.model_dir(BASE_RUN) / "model.onnx"
    written = onnx.stat().st_mtime_ns if onnx.exists() else 0
    before = project.snapshot()
    process, _ = project.start(command, BASE_RUN)
    if onnx_written:
        wait_for(lambda: onnx.exists() and onnx.stat().st_mtime_ns != written, process)
        delay = 0.0
    try:
        process.wait(delay)
        killed = False
    except subprocess.TimeoutExpired:
        killed = sigkill(process.pid)
        process.wait()
    code, output = project.run(command, BASE_RUN)
    problems = [] if code == 0 else [f"the next {command} exited {code}: {tail(output)}"]
    problems += project.orphans()
    parity = json.loads((project.output_dir(BASE_RUN) / "onnx_parity.json").read_text())
    if not parity.get("passed"):
        problems.append("onnx_parity.json does not record a passed check")
    if command == "register":
        versions = project.client().search_model_versions(f"name = '{BASE_RUN}'")
        if len(versions) != 1:
            problems.append(f"{len(versions)} registered versions of {BASE_RUN}, expected 1")
    when = "once model.onnx was rewritten" if onnx_written else f"after {delay}s"
    note = "the rerun succeeded; parity passed" + ("; one registered version" if command == "register" else "")
    return record("kill -9", command, seed, when + ("" if killed else " (it had ended)"), problems,
                  project.losses(before), note)


# --- byte flips --------------------------------------------------------------------------------
def flip_byte(path: Path, rng: random.Random, offset: int | None = None) -> int:
    """XOR one byte of ``path`` (at ``offset``, else a random one) with a random non-zero mask."""
    data = bytearray(path.read_bytes())
    offset = rng.randrange(len(data)) if offset is None else offset
    data[offset] ^= rng.randrange(1, 256)
    path.write_bytes(bytes(data))
    return offset


@contextmanager
def flipped(path: Path, rng: random.Random, offset: int | None = None) -> Iterator[tuple[int, int]]:
    """``path`` with one byte flipped for the block (yields the offset and the file's size),
    restored after, so the next fault finds it intact."""
    kept = path.read_bytes()
    try:
        yield flip_byte(path, rng, offset), len(kept)
    finally:
        path.write_bytes(kept)


def file_bytes(paths: list[Path]) -> dict[Path, bytes | None]:
    return {p: p.read_bytes() if p.exists() else None for p in paths}


def changed(before: dict[Path, bytes | None]) -> list[str]:
    return [f"{p.name} was overwritten by a command that read a corrupt input"
            for p, content in before.items() if (p.read_bytes() if p.exists() else None) != content]


def flip_checkpoint(project: Project, seed: int, which: str | None = None, offset: int | None = None) -> FaultRecord:
    """Flip a byte of the base run's best.pt (then `evaluate` and `export`) or last.pt (then a
    resumed `train`): each must fail with a clear error and leave eval.json and onnx_parity.json
    as they were, unless the flip hit bytes the loader never reads (its hashes then verify)."""
    from cnnlab.checkpoint import CheckpointError, load_checkpoint

    rng = random.Random(seed)
    which = which or rng.choice(["best.pt", "last.pt"])
    path = project.model_dir(BASE_RUN) / which
    before = project.snapshot()
    outputs = file_bytes([project.output_dir(BASE_RUN) / n for n in ("eval.json", "onnx_parity.json")]
                         + [project.model_dir(BASE_RUN) / "model.onnx"])
    with flipped(path, rng, offset) as (offset, size):
        try:
            load_checkpoint(path)
            intact = True
        except CheckpointError:
            intact = False
        commands = [("evaluate", ()), ("export", ())] if which == "best.pt" else \
            [("train", (f"train.resume_from={path}", "train.epochs=3", "run=resume-from-flipped"))]
        problems = []
        for command, extra in commands:
            code, output = project.run(command, BASE_RUN, *extra)
            if not intact:
                problems += [f"{command}: {p}" for p in [clear_error(code, output, str(path))] if p]
            elif code:
                problems.append(f"{command} exited {code} on a checkpoint whose hashes verify: {tail(output)}")
        if not intact:
            problems += changed(outputs)
    note = "the flip hit bytes torch.load skips; both hashes verified the content intact" if intact else \
        "clear error, exit 2, nothing overwritten"
    return record("byte flip", which, seed, f"offset {offset} of {size}", problems, project.losses(before), note)


def flip_prepared(project: Project, seed: int, offset: int | None = None) -> FaultRecord:
    """Flip a byte of the prepared dataset, then `evaluate` the base run: a clear error naming
    the file and eval.json untouched, or, when the file still loads with the same content, a
    harmless flip. Loading changed content without a word is "undetected"."""
    rng = random.Random(seed)
    path = project.prepared()
    kept = path.read_bytes()
    before = project.snapshot()
    outputs = file_bytes([project.output_dir(BASE_RUN) / "eval.json"])
    with flipped(path, rng, offset) as (offset, size):
        code, output = project.run("evaluate", BASE_RUN)
        if code == 0:
            same = same_prepared(kept, path)
            problems, undetected = [], not same
            note = "the flip hit bytes torch.load skips; the content is intact" if same else \
                "evaluate ran on changed data without a word"
        else:
            problems = [p for p in [clear_error(code, output, str(path))] if p] + changed(outputs)
            undetected, note = False, "clear error naming the file, exit 2, eval.json untouched"
    return record("byte flip", "prepared data", seed, f"offset {offset} of {size}", problems,
                  project.losses(before), note, undetected)


def same_prepared(original: bytes, flipped: Path) -> bool:
    """Whether the flipped file loads to the original's tensors and metadata."""
    import io

    import torch

    try:
        a = torch.load(io.BytesIO(original), weights_only=True)
        b = torch.load(flipped, weights_only=True)
    except Exception:  # noqa: BLE001 - unreadable: not the same
        return False
    return a.keys() == b.keys() and all(
        torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a)


def flip_onnx(project: Project, seed: int, offset: int | None = None) -> FaultRecord:
    """Flip a byte of the base run's model.onnx after its parity check, then `register`: it must
    refuse (clear error, exit 2), register no version and leave registered.json as it was."""
    rng = random.Random(seed)
    path = project.model_dir(BASE_RUN) / "model.onnx"
    before = project.snapshot()
    outputs = file_bytes([project.output_dir(BASE_RUN) / "registered.json"])
    with flipped(path, rng, offset) as (offset, size):
        code, output = project.run("register", BASE_RUN)
        problems = [p for p in [clear_error(code, output, str(path))] if p] + changed(outputs)
        after = project.snapshot().versions
        if after != before.versions:
            problems.append(f"registered versions changed from {before.versions} to {after}")
    return record("byte flip", "model.onnx", seed, f"offset {offset} of {size}", problems,
                  project.losses(before), "register refused: clear error, exit 2, no version")


def sqlite_dump(path: Path) -> list[str] | None:
    """Every row of the database as SQL, or None when SQLite cannot read it."""
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            return list(db.iterdump())
        finally:
            db.close()
    except sqlite3.DatabaseError:
        return None


def flip_store(project: Project, seed: int, store: str | None = None, offset: int | None = None) -> FaultRecord:
    """Flip a byte of a copy of the MLflow store (then `train` a new run into it) or of the Optuna
    storage (then run the finished search again on it). Either a clear error (exit 2, no run
    folder written), or the command succeeds on a copy whose rows SQLite reads exactly as the
    original's (the flip hit free space). Success on changed rows is "undetected"."""
    from cnnlab.search import searched_as

    rng = random.Random(seed)
    store = store or rng.choice(["mlflow", "optuna"])
    original = project.store if store == "mlflow" else project.optuna
    scratch = project.root / "flipped" / f"{store}-{seed}"
    scratch.mkdir(parents=True, exist_ok=True)
    copy = scratch / original.name
    shutil.copyfile(original, copy)
    size = copy.stat().st_size
    before = project.snapshot()
    clean = sqlite_dump(copy)
    offset = flip_byte(copy, rng, offset)
    same = sqlite_dump(copy) == clean
    run = f"flipped-{store}-{seed}"
    if store == "mlflow":
        code, output = project.run("train", run, "train.epochs=1", store=copy)
    else:
        study = searched_as(next(s.study_name for s in project.studies()))
        code, output = project.run("search", BASE_RUN, f"search.study={study}", *TINY_SEARCH, optuna_db=copy)
    problems, undetected = [], False
    if code == 0:
        undetected = not same
        note = ("SQLite reads the same rows: the flip hit free space" if same else
                "the command ran on a store whose rows changed, without a word (SQLite keeps no checksums)")
    else:
        problems = [p for p in [clear_error(code, output, str(copy))] if p]
        if project.model_dir(run).exists() or project.output_dir(run).exists():
            problems.append(f"train wrote {run}'s folders before the store failed")
        note = "clear error naming the store, exit 2"
    return record("byte flip", f"{store} store", seed, f"offset {offset} of {size}", problems,
                  project.losses(before), note, undetected)


# --- bad values for every setting ---------------------------------------------------------------
def leaf_settings() -> list[tuple[str, Any]]:
    """Every leaf setting of cnnlab.config.Config as (dotted key, annotated type)."""
    from cnnlab.config import Config

    def walk(cls: type, prefix: str) -> list[tuple[str, Any]]:
        found = []
        for name, tp in typing.get_type_hints(cls, include_extras=True).items():
            key = f"{prefix}{name}"
            inner = typing.get_args(tp)[0] if typing.get_origin(tp) is typing.Annotated else tp
            found += walk(inner, f"{key}.") if dataclasses.is_dataclass(inner) else [(key, tp)]
        return found

    return walk(Config, "")


def bad_values(tp: Any) -> list[tuple[str, str]]:
    """(what, YAML text) pairs a setting of type ``tp`` must reject: one of the wrong type and,
    for a ranged number (or a list of them, or a list with a length), one out of its range."""
    from annotated_types import Ge, Gt, Le, Lt, MinLen

    from cnnlab.config import LowHigh, _ranged

    constraints: tuple = ()
    inner = tp
    if typing.get_origin(tp) is typing.Annotated:
        inner, constraints = _ranged(tp)
    origin = typing.get_origin(inner)
    if origin is list:
        (item,) = typing.get_args(inner)
        found = [("wrong type", "7")]
        if any(isinstance(c, MinLen) and c.min_length > 0 for c in constraints):
            found.append(("out of range", "[]"))
        if any(isinstance(c, LowHigh) for c in typing.get_args(tp)[1:]):
            low_high = {int: "[3, 1]", float: "[0.5, 0.1]"}.get(_ranged(item)[0] if typing.get_origin(item) is
                                                                 typing.Annotated else item)
            if low_high:
                found.append(("out of range", low_high))
        if typing.get_origin(item) is typing.Annotated:
            found += [(what, f"[{value}]") for what, value in bad_values(item) if what == "out of range"]
        elif item is str:
            found.append(("wrong type", "[[1]]"))
        return found
    if origin is dict:
        return [("wrong type", "7")]
    if origin is typing.Literal:
        return [("wrong type", "7"), ("out of range", "not_a_choice")]
    if inner is bool:
        return [("wrong type", "maybe")]
    if inner is str:
        return [("wrong type", "[1, 2]")]
    found = [("wrong type", "abc" if inner is int else "[1]")]
    for constraint in constraints:
        kind = type(constraint)
        bound = {Ge: "ge", Gt: "gt", Le: "le", Lt: "lt"}.get(kind)
        if bound:
            value = getattr(constraint, bound)
            step = 1 if inner is int else 0.5
            found.append(("out of range", str({Ge: value - step, Gt: value, Le: value + step, Lt: value}[kind])))
    return found


def bad_settings_sweep(cli_keys: int = 3, root: Path | None = None) -> tuple[list[dict[str, Any]], list[FaultRecord]]:
    """Every bad value of every setting through ``load_config`` (a ConfigError naming the key),
    and the first ``cli_keys`` of them through `cnnlab train` in an empty folder as well
    (exit 2 naming the key, and no file, folder or store created)."""
    from cnnlab.config import ConfigError, load_config

    tried, failures = [], []
    naming = logging.getLogger("cnnlab.config")
    level = naming.level
    naming.setLevel(logging.ERROR)  # no warning per bad value that would rename the run
    try:
        for key, tp in leaf_settings():
            for what, value in bad_values(tp):
                try:
                    load_config(ROOT / "params.yaml", [f"{key}={value}"])
                    problem = "accepted"
                except ConfigError as err:
                    problem = "" if key in str(err) else f"the error does not name {key}: {err}"
                tried.append({"key": key, "value": value, "what": what,
                              "outcome": "failed" if problem else "survived", "note": problem})
                if problem:
                    failures.append(FaultRecord("bad value", key, 0, f"{what}: {value}", "failed", False, problem))
    finally:
        naming.setLevel(level)
    with tempfile.TemporaryDirectory(dir=root) as scratch:
        project = Project(Path(scratch) / "cli")
        for entry in [t for t in tried if t["what"] == "out of range"][:cli_keys]:
            code, output = project.run("train", "bad-value", f"{entry['key']}={entry['value']}")
            problem = clear_error(code, output, entry["key"])
            created = sorted(p.name for p in project.root.iterdir() if p.name != "logs")
            if created:
                problem += f" created {created}"
            entry["cli"] = "failed" if problem else "survived"
            if problem:
                entry["outcome"] = "failed"
                failures.append(FaultRecord("bad value", entry["key"], 0, f"cnnlab train: {entry['value']}", "failed",
                                            False, problem))
    return tried, failures


# --- the bench ---------------------------------------------------------------------------------
FAULTS: dict[str, Callable[[Project, int], FaultRecord]] = {
    "kill train": kill_train,
    "kill search coordinator": lambda project, seed: kill_search(project, seed, workers=1),
    "kill search worker": lambda project, seed: kill_search(project, seed, workers=2),
    "kill export": lambda project, seed: kill_stage(project, seed, "export"),
    "kill register": lambda project, seed: kill_stage(project, seed, "register"),
    "flip checkpoint": flip_checkpoint,
    "flip prepared data": flip_prepared,
    "flip onnx": flip_onnx,
    "flip store": flip_store,
}


def summarize(records: list[FaultRecord], bad_inputs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "faults_injected": len(records),
        "survived": sum(r.outcome == "survived" for r in records),
        "failed": sum(r.outcome == "failed" for r in records),
        "undetected": [f"{r.kind} {r.target} at {r.when}: {r.note}" for r in records if r.outcome == "undetected"],
        "bad_inputs_tried": len(bad_inputs),
        "bad_inputs_rejected": sum(b["outcome"] == "survived" for b in bad_inputs),
        "data_lost": sum(r.data_lost for r in records),
    }


def run_bench(faults: int, seed: int, workdir: Path) -> dict[str, Any]:
    rng = random.Random(seed)
    project = prepare_project(workdir / "project")
    run_search(project, "finished-study")  # a study for the Optuna store flips and the snapshot
    records = []
    # Every kind once before any repeats, then drawn at random; each fault's own seed from the bench's.
    kinds = list(FAULTS)
    rng.shuffle(kinds)
    draws = (kinds + [rng.choice(list(FAULTS)) for _ in range(max(0, faults - len(kinds)))])[:faults]
    for number, kind in enumerate(draws, 1):
        fault_seed = rng.randrange(2**31)
        start = time.monotonic()
        result = FAULTS[kind](project, fault_seed)
        records.append(result)
        print(f"{number:3d} {result.kind:<10} {result.target:<19} {result.outcome:<10} "
              f"{time.monotonic() - start:5.0f}s  {result.when}: {result.note}", flush=True)
    bad_inputs, bad_failures = bad_settings_sweep(root=workdir)
    return bench_record(faults, seed, records + bad_failures, bad_inputs)


def bench_record(faults: int, seed: int, records: list[FaultRecord], bad_inputs: list[dict[str, Any]]) -> dict[str, Any]:
    """What bench/faults.json holds (README's `results:faults` block is rendered from it)."""
    from cnnlab.runtime import machine
    return {"command": f"python bench/faults.py --faults {faults} --seed {seed}", "seed": seed,
            "machine": {**machine(), "python": platform.python_version(), "platform": platform.platform()},
            "summary": summarize(records, bad_inputs),
            "faults": [dataclasses.asdict(r) for r in records], "bad_inputs": bad_inputs}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faults", type=int, default=12, help="random faults to inject (each kind once first)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "faults.json")
    parser.add_argument("--keep", action="store_true", help="keep the scratch project (its path is printed)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="cnnlab-faults-"))
    start = time.monotonic()
    try:
        result = run_bench(args.faults, args.seed, workdir)
    finally:
        if args.keep:
            print(f"scratch project kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    result["wall_seconds"] = round(time.monotonic() - start)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    summary = result["summary"]
    print(f"\nfaults injected {summary['faults_injected']}, survived {summary['survived']}, failed "
          f"{summary['failed']}, undetected {len(summary['undetected'])}; bad inputs tried "
          f"{summary['bad_inputs_tried']} (rejected {summary['bad_inputs_rejected']}); data lost "
          f"{summary['data_lost']}  -> {args.out}")
    return 0 if summary["failed"] == 0 and summary["data_lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
