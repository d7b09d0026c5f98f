"""Whether the committed results still follow from the code, params and inputs as they are now.

    cnnlab provenance            # each stage: current, or stale and why (never run under DVC included)
    cnnlab provenance --check    # the same; exit 2 when a stage is stale

``dvc status`` answers a different question on a fresh clone: it lists every checkpoint and
prepared dataset as "not in cache", because no git commit holds them (a DVC remote does). That
hides what matters for trust, whether a committed figure came from the code beside it. This asks
``dvc status`` and sorts its answer. A cached file absent from this clone is only missing
(``dvc pull`` fetches it), provided dvc.lock's chain holds: the stage that reads it recorded the
md5 that the stage writing it recorded. Anything else makes a stage stale: a changed source
file, param, command or committed output, no dvc.lock entry, or a stale stage upstream.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .config import ConfigError
from .dvc_guard import stage_outs
from .contract import RECORDED_PIPELINES
from .dvcgen import PIPELINE_FILES, read_dvc_file

# The pipeline files whose results are committed (demo/dvc.yaml's land in a DVC experiment, not in git).
RECORDED_FILES = tuple(PIPELINE_FILES[pipeline] for pipeline in RECORDED_PIPELINES)


@dataclass(frozen=True)
class StageProvenance:
    """One stage: why its committed results are stale (none: current), and the cached outputs
    dvc.lock names that this clone lacks."""

    stage: str  # "experiments/dvc.yaml:train-e4_base"
    stale: tuple[str, ...]
    missing: tuple[str, ...]


@dataclass(frozen=True)
class Declared:
    """A stage as its dvc.yaml declares it and its dvc.lock records it, paths absolute."""

    deps: tuple[Path, ...]
    outs: tuple[Path, ...]
    cached: frozenset[Path]  # the outs DVC caches (absent from a clone until `dvc pull`)
    recorded_deps: dict[Path, str] | None  # path -> md5; None: no dvc.lock entry
    recorded_outs: dict[Path, str]


def pipelines(root: Path) -> list[str]:
    """The recorded pipeline files this checkout has."""
    return [dvc_file for dvc_file in RECORDED_FILES if (root / dvc_file).is_file()]


def declared_stages(root: Path) -> dict[str, Declared]:
    """Every stage of the recorded pipelines, by "file:name"."""
    stages = {}
    for dvc_file in pipelines(root):
        spec = read_dvc_file(root / dvc_file).get("stages", {})
        lock_file = (root / dvc_file).with_suffix(".lock")
        lock = read_dvc_file(lock_file).get("stages", {}) if lock_file.is_file() else {}
        for name, entry in spec.items():
            wdir = (root / dvc_file).parent / entry.get("wdir", ".")

            def absolute(path: str) -> Path:
                return Path(os.path.abspath(wdir / path))

            recorded, outs = lock.get(name), stage_outs(root / dvc_file, entry)
            stages[f"{dvc_file}:{name}"] = Declared(
                deps=tuple(absolute(dep) for dep in entry.get("deps", [])),
                outs=tuple(out for out, _ in outs), cached=frozenset(out for out, cached in outs if cached),
                recorded_deps=None if recorded is None else
                {absolute(d["path"]): d.get("md5", "") for d in recorded.get("deps", [])},
                recorded_outs={} if recorded is None else
                {absolute(o["path"]): o.get("md5", "") for o in recorded.get("outs", [])})
    return stages


def dvc_status(root: Path, dvc_file: str) -> dict[str, list]:
    """``dvc status --json`` of one pipeline file, keyed "file:name"."""
    # this interpreter's DVC, whichever `dvc` (if any) is on PATH
    result = subprocess.run([sys.executable, "-m", "dvc", "status", "--json", dvc_file], cwd=root,
                            capture_output=True, text=True)
    if result.returncode != 0:
        reason = next((line for line in result.stderr.splitlines() if line.strip()), "no output")
        raise ConfigError(f"`dvc status {dvc_file}` failed: {reason} (if another dvc command is running in "
                          "this repository, wait for it to end)")
    return {f"{dvc_file}:{key.split(':')[-1]}": changes for key, changes in json.loads(result.stdout or "{}").items()}


def producers(stages: dict[str, Declared]) -> dict[Path, str]:
    """Each declared output -> the stage that writes it."""
    return {out: name for name, stage in stages.items() for out in stage.outs}


def stage_changes(stage: Declared, changes: list, root: Path, writers: dict[Path, str],
                  stages: dict[str, Declared]) -> tuple[list[str], list[str]]:
    """Sort one stage's `dvc status` changes into reasons it is stale and cached files missing."""
    stale, missing = [], []

    def shown(path: Path) -> str:
        return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)

    for change in changes:
        if isinstance(change, str):
            stale.append(change)
            continue
        for kind, paths in change.items():
            for path_text, status in paths.items():
                path = Path(os.path.abspath(root / path_text))
                if isinstance(status, dict):  # a params file: key -> status
                    stale += [f"param {key} {what}" for key, what in status.items()]
                elif kind == "changed outs":
                    if path in stage.cached and status in ("deleted", "not in cache"):
                        missing.append(shown(path))
                    else:
                        stale.append(f"output {shown(path)} {status}")
                elif status == "deleted" and path in writers:
                    # an input another stage writes and caches: fine if both recorded the same file
                    written = stages[writers[path]].recorded_outs.get(path)
                    if written is None or written != stage.recorded_deps.get(path):
                        stale.append(f"input {shown(path)} is not what {writers[path]} recorded")
                else:
                    stale.append(f"{shown(path)} {status}")
    return stale, missing


def provenance(root: Path) -> list[StageProvenance]:
    """Every stage of the recorded pipelines, in dvc.yaml order."""
    root = Path(os.path.abspath(root))
    stages = declared_stages(root)
    status = {key: changes for dvc_file in pipelines(root) for key, changes in dvc_status(root, dvc_file).items()}
    writers = producers(stages)
    stale, missing = {}, {}
    for name, stage in stages.items():
        if stage.recorded_deps is None:
            stale[name], missing[name] = ["never ran under DVC (no dvc.lock entry)"], []
        else:
            stale[name], missing[name] = stage_changes(stage, status.get(name, []), root, writers, stages)
    upstream_stale = True
    while upstream_stale:  # a stage reading what a stale stage wrote is stale too, down the chain
        upstream_stale = False
        for name, stage in stages.items():
            if stale[name]:
                continue
            for dep in stage.deps:
                writer = next((writers[p] for p in (dep, *dep.parents) if p in writers), None)
                if writer and writer != name and stale[writer]:
                    stale[name] = [f"upstream {writer} is stale"]
                    upstream_stale = True
                    break
    return [StageProvenance(name, tuple(stale[name]), tuple(missing[name])) for name in stages]


def provenance_table(root: Path, check: bool) -> None:
    """Print each stage's provenance; with ``check``, fail when any stage is stale."""
    rows = provenance(root)
    for row in rows:
        why = "; ".join(row.stale[:3]) + (f"; and {len(row.stale) - 3} more" if len(row.stale) > 3 else "")
        print(f"{'stale  ' if row.stale else 'current'}  {row.stage}" + (f"  ({why})" if why else ""))
    stale = [row.stage for row in rows if row.stale]
    missing = sum(len(row.missing) for row in rows)
    print(f"\n{len(rows) - len(stale)} of {len(rows)} stages current, {len(stale)} stale.")
    if missing:
        print(f"{missing} cached outputs named in dvc.lock are not in this clone: `dvc pull <file>:<stage>` "
              "fetches them from a remote that holds them (README: Remote storage).")
    if check and stale:
        raise ConfigError(f"{len(stale)} stages' committed results do not follow from the code and params as "
                          f"they are (first: {stale[0]}); re-run them with `dvc repro <file>:<stage>` and "
                          "commit dvc.lock with the results")
