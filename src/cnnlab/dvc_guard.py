"""Refuse to write, outside DVC, a file that one of the project's dvc.yaml stages caches.

Before DVC runs a stage it deletes the stage's cached outputs, and it restores them only from
its cache. A model or prepared dataset that `cnnlab train` or `cnnlab prepare` wrote directly
is in no cache, so the next `dvc repro` or `dvc exp run` (even one that fails) deletes it for
good, without a word. Hence the rule: a file DVC caches is written by DVC only. A command that
DVC runs has ``DVC_STAGE`` in its environment and passes; run directly, a command whose stages
would write such a file stops before doing anything, naming the file, the stage that owns it
and the two ways out. Runs of other names and runs into other folders (every test) pass.

    refuse_uncached_writes(["train"], config, "params.yaml")   # ConfigError, or nothing
"""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass
from pathlib import Path

from .config import Config, ConfigError
from .contract import ControlFiles, StudyFiles, file_paths, stage
from .dvcgen import CATALOGUE_DVC, DEMO_DVC, MAIN_FILE, read_dvc_file

DVC_STAGE_ENV = "DVC_STAGE"  # DVC sets it for every stage command it runs (dvc/stage/run.py)
RUN_FIX = "give this run its own name with `-S run=<name>` (its outputs then go to outputs/<name>/, models/<name>/)"
PREPARED_FIX = "give its prepared data a folder of its own with `-S data.prepared_dir=<folder>`"
STUDY_FIX = "give the study its own name with `-S search.study=<name>`"


@dataclass(frozen=True)
class CachedOut:
    """A cached ``outs`` (or metrics/plots) entry of a dvc.yaml stage."""

    path: Path  # absolute
    dvc_file: str  # relative to the repository root, e.g. experiments/dvc.yaml
    stage: str


def stage_outs(dvc_path: Path, entry: dict) -> list[tuple[Path, bool]]:
    """A dvc.yaml stage's outputs (outs, metrics, plots): each absolute path, and whether DVC caches it."""
    wdir = dvc_path.parent / entry.get("wdir", ".")
    found = []
    for group in ("outs", "metrics", "plots"):
        for out in entry.get(group) or []:
            out_path, options = next(iter(out.items())) if isinstance(out, dict) else (out, None)
            # DVC caches unless told not to
            found.append((Path(os.path.abspath(wdir / out_path)), (options or {}).get("cache", True)))
    return found


@functools.lru_cache(maxsize=None)
def cached_outs(root: Path) -> tuple[CachedOut, ...]:
    """Every cached output the dvc.yaml files under ``root`` declare (read once per process)."""
    found = []
    for dvc_file in (MAIN_FILE, CATALOGUE_DVC, DEMO_DVC):
        path = root / dvc_file
        if not path.is_file():
            continue
        for name, entry in read_dvc_file(path).get("stages", {}).items():
            found += [CachedOut(out, dvc_file, name) for out, cached in stage_outs(path, entry) if cached]
    return tuple(found)


def overlaps(a: Path, b: Path) -> bool:
    """The same path, or one is a folder holding the other."""
    return a == b or a in b.parents or b in a.parents


def refuse_uncached_writes(stages: list[str] | tuple[str, ...], config: Config, params: str | Path) -> None:
    """ConfigError when, outside DVC, ``stages`` run with ``config`` would write a file that a
    dvc.yaml beside ``params`` caches."""
    if os.environ.get(DVC_STAGE_ENV):
        return
    root = Path(os.path.abspath(Path(params).parent))
    outs = cached_outs(root)
    clashes = [(output.file, written, out) for name in stages for output in stage(name).outputs
               if output.cache and output.role != "scratch"
               for written in [Path(os.path.abspath(p)) for p in file_paths(config, output.file)]
               for out in outs if overlaps(written, out.path)]
    if not clashes:
        return
    _, written, owner = clashes[0]
    target = next(out.stage for *_, out in reversed(clashes) if out.dvc_file == owner.dvc_file)
    fixes = " and ".join(dict.fromkeys(fix_for(field) for field, *_ in clashes))
    shown = written.relative_to(root) if root in written.parents else written
    upto = f", up to stage `{target}`" if target != owner.stage else ""
    more = f" (and {len(clashes) - 1} more cached files{upto})" if len(clashes) > 1 else ""
    raise ConfigError(
        f"{shown} is a cached output of stage `{owner.stage}` in {owner.dvc_file}{more}: written outside DVC "
        "it would be in no DVC cache, and the next `dvc repro` or `dvc exp run` deletes it for good. "
        f"Run it through DVC so the file is cached: `dvc repro {owner.dvc_file}:{target}` "
        f"(or `dvc exp run {owner.dvc_file}:{target} -S key=value`), or {fixes}")


def fix_for(field: str) -> str:
    """The setting that moves a RunFiles/StudyFiles/ControlFiles field out of DVC's way."""
    if field == "prepared":
        return PREPARED_FIX
    if field in {f.name for layout in (StudyFiles, ControlFiles) for f in dataclasses.fields(layout)}:
        return STUDY_FIX
    return RUN_FIX
