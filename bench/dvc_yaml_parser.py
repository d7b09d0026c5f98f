"""`dvc status` on this repository with ruamel.yaml's C parser (the install's) against its pure-Python one.

    python bench/dvc_yaml_parser.py [--repeats 5] [--out bench/dvc_yaml_parser.json]   # or: make bench-dvc

DVC reads every dvc.yaml and dvc.lock of the repository with ruamel.yaml each time it builds its
index (`dvc status`, `dvc repro`, and several times per stage of `dvc exp run`); the catalogue's
lock file pins the code files of 150 stages. ruamel.yaml leaves its C parser to the optional
ruamel.yaml.clib, without which it parses in pure Python. Both sides run the same `dvc status`
in fresh processes, in turn, the pure side with the C parser switched off
(``ruamel.yaml.main.CParser = None``, what ruamel.yaml does when the extension is missing); both
must print the same status. The JSON holds every repeat's seconds, the medians and their ratio,
the files' sizes, the versions and the machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

from cnnlab.dvcgen import PIPELINE_FILES
from cnnlab.runtime import machine

ROOT = Path(__file__).resolve().parents[1]
DVC_MAIN = "import sys; from dvc.cli import main; sys.exit(main(sys.argv[1:]))"
PARSERS = {
    "c": DVC_MAIN,
    "pure_python": "import ruamel.yaml.main as parser_choice; parser_choice.CParser = None; " + DVC_MAIN,
}


def timed_status(parser: str) -> tuple[float, str]:
    """Wall seconds of one `dvc status` in a fresh process with ``parser``, and what it printed."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PARSERS[parser], "status"], cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"`dvc status` with the {parser} parser failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "dvc_yaml_parser.json")
    args = parser.parse_args()

    from ruamel.yaml.main import CParser
    if CParser is None:
        sys.exit("ruamel.yaml's C parser is not installed here (ruamel.yaml.clib): run `make install`")
    seconds: dict[str, list[float]] = {name: [] for name in PARSERS}
    printed: dict[str, set[str]] = {name: set() for name in PARSERS}
    for repeat in range(args.repeats):
        for name in PARSERS:  # in turn, so load that comes and goes hits both
            took, out = timed_status(name)
            seconds[name].append(round(took, 2))
            printed[name].add(out)
            print(f"repeat {repeat}: {name} {took:.1f} s", flush=True)
    if len(printed["c"] | printed["pure_python"]) != 1:
        sys.exit("the two parsers' `dvc status` differ: the C parser is not a drop-in here")
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    result = {
        "command": "dvc status",
        "repeats": args.repeats,
        "seconds": seconds,
        "median_seconds": medians,
        "pure_python_over_c": round(medians["pure_python"] / medians["c"], 2),
        "dvc_files_bytes": {name: (ROOT / name).stat().st_size
                            for stage_file in PIPELINE_FILES.values()
                            for name in (stage_file, str(Path(stage_file).with_suffix(".lock")))
                            if (ROOT / name).is_file()},
        "versions": {package: version(package) for package in ("dvc", "ruamel.yaml", "ruamel.yaml.clib")},
        "machine": machine(),
        "measured": time.strftime("%Y-%m-%d"),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"dvc status: C parser {medians['c']:.1f} s, pure Python {medians['pure_python']:.1f} s "
          f"({result['pure_python_over_c']}x) -> {args.out}")


if __name__ == "__main__":
    main()
