"""Run one stage while recording which settings it reads and which cnnlab modules it imports.

    python -m tests.stage_probe STAGE OUT.json --params params.yaml -S key=value ...

Every config dataclass records the fields read on it, under its place in the config tree
(``TrainConfig.lr`` -> ``train.lr``). Copying a whole section (``dataclasses.replace``, ``asdict``
for a saved config.yaml or MLflow params) and building configs (``load_config``) are not reads
of a result-changing setting, so they are not recorded. Run in a fresh process, so that the
modules in ``sys.modules`` afterwards are the ones the stage needed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import threading
import typing

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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("stage")
    parser.add_argument("out")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--group", default="")
    parser.add_argument("-S", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    config = load_config(args.params, args.overrides)
    spec = stage(args.stage)
    module = __import__(f"cnnlab.{spec.module}", fromlist=[spec.function])
    function = getattr(module, spec.function)
    reads: set[str] = set()
    install_tracer(reads)
    if args.stage == "separability":
        function(config, args.group, args.params)
    elif args.stage == "compare":
        function(config, 0.005, args.params, args.overrides)
    else:
        function(config)
    modules = sorted(m for m in sys.modules if m == "cnnlab" or m.startswith("cnnlab."))
    with open(args.out, "w") as out:
        json.dump({"reads": sorted(reads), "modules": modules}, out)


if __name__ == "__main__":
    main()
