"""cnnlab's one entry point; ``dvc.yaml``, ``MLproject`` and the README all call it.

    cnnlab datasets                 # summary table of every dataset it can find
    cnnlab models                   # every registered model with its parameter count
    cnnlab prepare|train|evaluate|analyze|report|export|register [-S section.key=value ...]
    cnnlab pipeline                 # all stages in order, without DVC (MLproject's main)
    cnnlab dvc-yaml [--check]       # regenerate the dvc.yaml files from the stage contract
    cnnlab results [--check]        # regenerate README.md's and docs/RESULTS.md's figures from result files
    cnnlab predict MODEL.onnx IMAGE|GLOB|NPZ ...   # class probabilities as JSON (ONNX model alone)
    cnnlab server [--check]         # a shared MLflow tracking server on PostgreSQL (cnnlab.server)

It parses and dispatches; the stages (cnnlab.stages) do the work. Every command but ``predict`` reads
``params.yaml`` (``--params``) with its catalogue entry merged in and takes ``-S key=value`` as ``dvc exp
run -S`` does. Before a stage writes, it refuses a dvc.yaml the settings no longer generate (under DVC:
cnnlab.stage_guard), a write of what DVC caches (outside DVC: cnnlab.dvc_guard), and prepared data other
than the run records (cnnlab.prepared_guard); it creates the MLflow store (cnnlab.store_setup). Ctrl-C or
SIGTERM: runs end KILLED, one line, exit 130 or 143 (cnnlab.lifecycle). ``--verbose``: more libraries' INFO.
``torchrun --standalone --nproc_per_node=N -m cnnlab.cli train ...``: N processes (cnnlab.distributed).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

from .config import Config, ConfigError, load_config
from .console import configure_logging
from .contract import PIPELINE, STAGES, SWEEPS, file_path, stage
from .dvc_guard import refuse_uncached_writes
from .files import record_stage_time
from .lifecycle import exit_code, interrupted_line, signals_as_interrupts
from .prepared_guard import refuse_mismatched_prepared
from .stage_guard import refuse_stale_pipeline


def run_stage(name: str) -> Callable[[Config, Any], Any]:
    """A command that calls the stage ``name`` declared in the contract."""
    spec = stage(name)

    def command(config: Config, args) -> Any:
        started = time.perf_counter()
        result = getattr(importlib.import_module(f"cnnlab.{spec.module}"), spec.function)(config)
        from .distributed import ranks_from_env  # torch: loaded by the stage already
        from .runtime import machine

        if ranks_from_env().is_main:  # under torchrun, rank 0 alone writes the run's files
            record_stage_time(file_path(config, "timings"), name, time.perf_counter() - started, machine())
        return result

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


def regenerated(write: Callable[[Path, bool], list[Path]], fix: str, args) -> None:
    """`dvc-yaml` and `results`: rewrite generated files, or with --check list those that differ."""
    root = Path(args.params).resolve().parent
    stale = write(root, args.check)
    names = ", ".join(str(p.relative_to(root)) for p in stale)
    if args.check and stale:
        raise ConfigError(f"{names} differ from what generates them; {fix} and commit the result")
    print("up to date" if args.check else f"written: {names or 'nothing changed'}")


def cmd_dvc_yaml(config: Config, args) -> None:
    from .dvcgen import write_dvc_files

    regenerated(write_dvc_files, "run `cnnlab dvc-yaml`", args)


def cmd_results(config: Config, args) -> None:
    from .results import ResultsError
    from .stages.results import write_results

    try:
        regenerated(write_results, "run `cnnlab results`", args)
    except ResultsError as err:
        raise ConfigError(str(err)) from err


def cmd_provenance(config: Config, args) -> None:
    from .provenance import provenance_table

    provenance_table(Path(args.params).resolve().parent, args.check)


def cmd_predict(config: None, args) -> None:
    from .stages.predict import predict

    result = json.dumps(predict(args.model, args.inputs, args.convert_channels, args.npz_key), indent=2)
    try:
        print(result, flush=True)
    except BrokenPipeError:  # the reader stopped early (`| head`): what it read is all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit


def cmd_server(config: Config, args) -> None:
    from .server import serve

    serve(config.server, check_only=args.check)


def stages_of(command: str) -> tuple[str, ...]:
    """The contract stages a command runs (none for datasets, models, dvc-yaml)."""
    name = command.replace("-", "_")
    return PIPELINE if command == "pipeline" else (name,) if name in STAGES or name in SWEEPS else ()


COMMANDS: dict[str, tuple[Callable[[Config, Any], Any], str]] = {
    "datasets": (cmd_datasets, "summary table of the datasets found (shape, samples per split)"),
    "models": (cmd_models, "registered models with their parameter counts"),
    **{name: (run_stage(name), stage(name).summary) for name in PIPELINE},
    "pipeline": (cmd_pipeline, "run prepare..register in order without DVC"),
    # seeds, search, search-report, retrain-best, search-control, retrain-control, search-compare, freeze-sweep
    **{name.replace("_", "-"): (run_stage(name), stage(name).summary) for name in SWEEPS
       if name not in ("compare", "separability")},
    "compare": (cmd_compare, stage("compare").summary),
    "separability": (cmd_separability, stage("separability").summary),
    "results": (cmd_results, "regenerate the docs' figures from the committed result files (--check: compare)"),
    "provenance": (cmd_provenance, "whether committed results follow from the code (--check: exit 2 if not)"),
    "server": (cmd_server, "a shared MLflow tracking server: PostgreSQL store, proxied artifacts (--check: "
                           "create the database and check the pools only)"),
    "dvc-yaml": (cmd_dvc_yaml, "write dvc.yaml and experiments/dvc.yaml from the stage contract (--check: compare)"),
    "predict": (cmd_predict, "class probabilities of image files or an .npz, as JSON, from an exported model.onnx"),
}
# Commands that read no params.yaml and import no torch: they run anywhere, given their files.
STANDALONE = ("predict",)
# Reported in one line (exit 2), not a traceback. cnnlab's own errors derive from RuntimeError or ValueError
# (tests/test_cli.py checks each), so no command imports their modules (torchvision, onnx) only to name them.
EXPECTED_ERRORS = (FileNotFoundError, RuntimeError, ValueError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cnnlab", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    verbose_help = "also show other libraries' INFO lines (openTSNE, onnxscript, MLflow, alembic)"
    parser.add_argument("-v", "--verbose", action="store_true", help=verbose_help)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        # also after the command (`cnnlab train --verbose`); SUPPRESS keeps a flag given before it
        p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=verbose_help)
        if name == "predict":
            add_predict_arguments(p)
            continue
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
        if name in ("dvc-yaml", "results", "provenance", "server"):
            p.add_argument("--check", action="store_true", help="only check, as the description above says")
    return parser


def add_predict_arguments(p: argparse.ArgumentParser) -> None:
    from .stages.predict import NPZ_KEY

    p.add_argument("model", help="an exported model.onnx (`cnnlab export` writes models/<run>/model.onnx)")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files (PNG, JPEG), quoted globs ('digits/*.png'), or .npz files of uint8 images")
    p.add_argument("--npz-key", default=NPZ_KEY, help=f"the array an .npz holds its images under (default: {NPZ_KEY})")
    p.add_argument("--convert-channels", action="store_true",
                   help="convert images of other channels (RGB for a grayscale model, or back) with PIL "
                        "instead of refusing them")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    if args.command in STANDALONE:
        try:
            COMMANDS[args.command][0](None, args)
        except EXPECTED_ERRORS as err:
            return error_exit(args, err)
        return 0
    from .distributed import launch_words, ranks_from_env, refuse_other_commands
    from .store_setup import create_store_for

    try:
        with signals_as_interrupts():  # SIGTERM ends runs KILLED, as Ctrl-C does
            refuse_other_commands(args.command, ranks_from_env())
            config = load_config(args.params, args.overrides)
            for refuse in (refuse_stale_pipeline, refuse_uncached_writes, refuse_mismatched_prepared):
                refuse(stages_of(args.command), config, args.params)  # before anything is written
            create_store_for(stages_of(args.command), config.tracking.uri)  # once, before any worker opens it
            COMMANDS[args.command][0](config, args)
    except KeyboardInterrupt as err:
        launcher = launch_words(ranks_from_env())  # resumed as it was started (torchrun or not)
        print(interrupted_line(args.command, args.params, args.overrides, err, launcher), file=sys.stderr,
              flush=True)
        return exit_code(err)
    except EXPECTED_ERRORS as err:
        return error_exit(args, err)
    return 0


def error_exit(args, err: Exception) -> int:
    """One line naming the problem and the fix (the traceback with CNNLAB_DEBUG=1); exit code 2."""
    if os.environ.get("CNNLAB_DEBUG"):
        raise err
    print(f"cnnlab {args.command}: error: {err}", file=sys.stderr)
    print("(set CNNLAB_DEBUG=1 for the traceback)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
