"""Run stages while recording which settings each reads, which cnnlab modules it imports and
which files of the run's folders (outputs, models, prepared data) it reads and writes.

    python -m tests.stage_probe PLAN.json    # [{"stage", "out", "params", "group", "overrides"}, ...]

Every config dataclass records the fields read on it, under its place in the config tree
(``TrainConfig.lr`` -> ``train.lr``). Copying a whole section (``dataclasses.replace``, ``asdict``
for a saved config.yaml or MLflow params) and building configs (``load_config``) are not reads
of a result-changing setting, so they are not recorded. The stages run in order, each in a
child forked from one process that imported the third-party libraries first (torch, MLflow, ...;
no cnnlab module beyond this probe's own): each child starts with no stage's cnnlab modules, so
the modules in its ``sys.modules`` afterwards are the ones its stage needed, and the seconds of
importing are paid once, not once per stage. A file counts as read when Python opens it for
reading (the ``open`` audit event: ``open``, ``Path.read_text``, ``np.load``, ``torch.load``)
and as written when it is new or changed afterwards (``torch.save`` writes from C++, unseen by
the audit hook).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import threading
import typing
from pathlib import Path

import cnnlab.config as config_module
from cnnlab.config import Config, load_config
from cnnlab.contract import stage

_quiet = threading.local()


def section_paths(cls: type = Config, prefix: str = "") -> dict[type, str]:
    paths = {cls: prefix}
    for name, tp in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(tp):
            paths.update(section_paths(tp, f"{prefix}.{name}" if prefix else name))
    return paths


def quietly(function):
    def wrapper(*args, **kwargs):
        depth = getattr(_quiet, "depth", 0)
        _quiet.depth = depth + 1
        try:
            return function(*args, **kwargs)
        finally:
            _quiet.depth = depth
    return wrapper


def install_tracer(reads: set[str]) -> None:
    for cls, prefix in section_paths().items():
        # a section itself (config.train) is not a setting: what is read inside it is
        fields = {name for name, tp in typing.get_type_hints(cls).items() if not dataclasses.is_dataclass(tp)}
        original = cls.__getattribute__

        def traced(self, name, _fields=fields, _prefix=prefix, _original=original):
            if name in _fields and not getattr(_quiet, "depth", 0):
                reads.add(f"{_prefix}.{name}" if _prefix else name)
            return _original(self, name)

        cls.__getattribute__ = traced
    dataclasses.replace = quietly(dataclasses.replace)
    dataclasses.asdict = quietly(dataclasses.asdict)
    for name in ("load_config", "config_from_dict", "read_run_config"):
        setattr(config_module, name, quietly(getattr(config_module, name)))


# Imported before forking: third-party only, so no cnnlab module is imported ahead of a stage.
HEAVY_LIBRARIES = ("numpy", "torch", "torchvision", "mlflow", "optuna", "sklearn", "matplotlib.pyplot", "onnx",
                   "onnxruntime", "openTSNE", "yaml", "sqlalchemy")


def run_folders(config: Config) -> list[Path]:
    return [Path(config.outputs_dir).resolve(), Path(config.models_dir).resolve(),
            Path(config.data.prepared_dir).resolve()]


def snapshot(folders: list[Path]) -> dict[str, int]:
    return {str(f): f.stat().st_mtime_ns for folder in folders if folder.exists()
            for f in folder.rglob("*") if f.is_file()}


def install_open_hook(folders: list[Path], opened: set[str]) -> None:
    def hook(event: str, args: tuple) -> None:
        if event != "open" or isinstance(args[0], int):
            return
        path, mode, flags = args
        reading = ("r" in mode and "+" not in mode) if isinstance(mode, str) else (flags & os.O_ACCMODE) == os.O_RDONLY
        if not reading:
            return
        resolved = Path(os.fsdecode(path)).resolve()
        if any(folder == resolved or folder in resolved.parents for folder in folders):
            opened.add(str(resolved))

    sys.addaudithook(hook)


def probe(stage_name: str, out: str, params: str, group: str, overrides: list[str]) -> None:
    config = load_config(params, overrides)
    spec = stage(stage_name)
    module = __import__(f"cnnlab.{spec.module}", fromlist=[spec.function])
    function = getattr(module, spec.function)
    reads: set[str] = set()
    folders, opened = run_folders(config), set()
    before = snapshot(folders)
    install_open_hook(folders, opened)
    install_tracer(reads)
    if stage_name == "separability":
        function(config, group, params)
    elif stage_name == "compare":
        function(config, 0.005, params, overrides)
    else:
        function(config)
    modules = sorted(m for m in sys.modules if m == "cnnlab" or m.startswith("cnnlab."))
    written = sorted(path for path, mtime in snapshot(folders).items() if before.get(path) != mtime)
    with open(out, "w") as handle:
        json.dump({"reads": sorted(reads), "modules": modules, "opened": sorted(opened), "written": written}, handle)


def run_plan(plan: list[dict]) -> int:
    """Each stage in a forked child, in order; stops at the first that fails (its exit status)."""
    import importlib
    import os
    import time

    for name in HEAVY_LIBRARIES:
        importlib.import_module(name)
    for step in plan:
        sys.stdout.flush()
        sys.stderr.flush()
        started = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                probe(step["stage"], step["out"], step["params"], step.get("group", ""), step["overrides"])
                status = 0
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(status)
        _, wait_status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(wait_status)
        print(f"stage_probe: {step['stage']} {time.perf_counter() - started:.1f} s", file=sys.stderr)
        if code != 0:
            print(f"stage_probe: {step['stage']} failed (exit {code})", file=sys.stderr)
            return 1
    return 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("plan")
    with open(parser.parse_args().plan) as handle:
        sys.exit(run_plan(json.load(handle)))


if __name__ == "__main__":
    main()
