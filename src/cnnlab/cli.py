"""cnnlab's one entry point; ``dvc.yaml``, ``MLproject`` and the README all call it.

    cnnlab datasets                 # summary table of every dataset it can find
    cnnlab models                   # every registered model with its parameter count
    cnnlab prepare|train|evaluate|analyze|report|export|register [-S section.key=value ...]
    cnnlab pipeline                 # all stages in order, without DVC (MLproject's main)
    cnnlab dvc-yaml [--check]       # regenerate the dvc.yaml files from the stage contract

Every command reads ``params.yaml`` (``--params`` for another file) with the catalogue entry
``experiment`` names (catalogue.yaml) merged in, and accepts the same ``-S key=value``
overrides as ``dvc exp run -S``. It parses and dispatches: the stages (cnnlab.stages) do the work.
Run outside DVC, a command refuses to write a file a dvc.yaml stage caches (cnnlab.dvc_guard).
Ctrl-C or SIGTERM ends the command's MLflow runs KILLED and prints one line (for training, the
command that resumes it); the exit code is then 130 or 143 (cnnlab.lifecycle).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Callable

from .config import Config, ConfigError, load_config
from .contract import PIPELINE, STAGES, SWEEPS, stage
from .dvc_guard import refuse_uncached_writes
from .lifecycle import exit_code, signals_as_interrupts


def run_stage(name: str) -> Callable[[Config, Any], Any]:
    """A command that calls the stage ``name`` declared in the contract."""
    spec = stage(name)

    def command(config: Config, args) -> Any:
        return getattr(importlib.import_module(f"cnnlab.{spec.module}"), spec.function)(config)

    return command


def cmd_datasets(config: Config, args) -> None:
    from .inventory import datasets_table

    datasets_table(config, args.names, args.per_class, args.json)


def cmd_models(config: Config, args) -> None:
    from .inventory import models_table

    models_table()


def cmd_pipeline(config: Config, args) -> None:
    for name in PIPELINE:
        print(f"== {name}", flush=True)
        run_stage(name)(config, args)


def cmd_compare(config: Config, args) -> None:
    from .stages.compare import compare

    compare(config, args.tolerance, args.params, args.overrides)


def cmd_separability(config: Config, args) -> None:
    from .stages.separability import separability

    separability(config, args.group, args.params)


def cmd_dvc_yaml(config: Config, args) -> None:
    from .dvcgen import write_dvc_files

    root = Path(args.params).resolve().parent
    stale = write_dvc_files(root, check=args.check)
    if args.check and stale:
        raise ConfigError(f"{', '.join(str(p.relative_to(root)) for p in stale)} differ from the stage contract; "
                          "run `cnnlab dvc-yaml` and commit the result")
    print(("up to date" if args.check else "written: " + (", ".join(str(p.relative_to(root)) for p in stale)
                                                          or "nothing changed")))


def stages_of(command: str) -> tuple[str, ...]:
    """The contract stages a command runs (none for datasets, models, dvc-yaml)."""
    if command == "pipeline":
        return PIPELINE
    name = command.replace("-", "_")
    return (name,) if name in STAGES or name in SWEEPS else ()


def stage_help(name: str) -> str:
    return stage(name).summary


COMMANDS: dict[str, tuple[Callable[[Config, Any], Any], str]] = {
    "datasets": (cmd_datasets, "summary table of the datasets found (shape, samples per split)"),
    "models": (cmd_models, "registered models with their parameter counts"),
    **{name: (run_stage(name), stage_help(name)) for name in PIPELINE},
    "seeds": (run_stage("seeds"), stage_help("seeds")),
    "compare": (cmd_compare, stage_help("compare")),
    "search": (run_stage("search"), stage_help("search")),
    "search-report": (run_stage("search_report"), stage_help("search_report")),
    "retrain-best": (run_stage("retrain_best"), stage_help("retrain_best")),
    "pipeline": (cmd_pipeline, "run prepare..register in order without DVC"),
    "freeze-sweep": (run_stage("freeze_sweep"), stage_help("freeze_sweep")),
    "separability": (cmd_separability, stage_help("separability")),
    "dvc-yaml": (cmd_dvc_yaml, "write dvc.yaml and experiments/dvc.yaml from the stage contract (--check: compare)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cnnlab", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
        p.add_argument("-S", "--set", dest="overrides", action="extend", nargs="+", default=[],
                       metavar="KEY=VALUE", help="override settings, as `dvc exp run -S` (repeatable); "
                                                 "-S run=<name> names the run")
        if name == "datasets":
            p.add_argument("names", nargs="*", help="datasets to summarise (default: all registered)")
            p.add_argument("--per-class", action="store_true", help="also print per-class counts")
            p.add_argument("--json", help="also write the table as JSON to this file")
        if name == "separability":
            p.add_argument("--group", required=True, help="experiments whose reference.group is this (e.g. e8)")
        if name == "compare":
            p.add_argument("--tolerance", type=float, default=0.005,
                           help="|ours - reference| within this counts as a match (default 0.005 = 0.5 pp)")
        if name == "dvc-yaml":
            p.add_argument("--check", action="store_true", help="only compare; exit 2 when a file differs")
    return parser


def interrupted_line(args, err: KeyboardInterrupt) -> str:
    """The one line an interrupted command prints: where it stopped and the command that goes
    on from there (this command's own settings, plus the interruption's ``resume_settings``)."""
    settings = getattr(err, "resume_settings", None)
    if settings is None:
        return f"cnnlab {args.command}: interrupted; run the same command again to go on"
    if args.command not in ("train", "pipeline"):  # seeds, retrain-best: runs configured in code
        return f"cnnlab {args.command}: {err}"
    kept = [o for o in args.overrides if o.split("=", 1)[0] not in settings]
    params = [] if args.params == "params.yaml" else ["--params", args.params]
    overrides = [*kept, *(f"{key}={value}" for key, value in settings.items())]
    command = shlex.join(["cnnlab", "train", *params, *(word for o in overrides for word in ("-S", o))])
    return f"{err}; {'resume' if settings else 'start again'} with `{command}`"


def main(argv: list[str] | None = None) -> int:
    # Our own INFO lines; other libraries' (onnxscript, openTSNE, alembic) only from WARNING up.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("cnnlab").setLevel(logging.INFO)
    args = build_parser().parse_args(argv)
    from .checkpoint import CheckpointError
    from .data import DatasetError
    from .export import ParityError
    from .models import ModelError
    from .train import TrainingDiverged

    expected = (ConfigError, DatasetError, ModelError, CheckpointError, TrainingDiverged, ParityError,
                FileNotFoundError, RuntimeError, ValueError)
    try:
        with signals_as_interrupts():  # SIGTERM ends runs KILLED, as Ctrl-C does
            config = load_config(args.params, args.overrides)
            refuse_uncached_writes(stages_of(args.command), config, args.params)  # DVC's files: DVC writes them
            COMMANDS[args.command][0](config, args)
    except KeyboardInterrupt as err:
        print(interrupted_line(args, err), file=sys.stderr, flush=True)
        return exit_code(err)
    except expected as err:
        if os.environ.get("CNNLAB_DEBUG"):
            raise
        print(f"cnnlab {args.command}: error: {err}", file=sys.stderr)
        print("(set CNNLAB_DEBUG=1 for the traceback)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
