"""Under DVC, refuse to run a stage of a dvc.yaml that the current settings would not generate.

The dvc.yaml files are generated from params.yaml, catalogue.yaml and the code (cnnlab.dvcgen),
and a test checks the committed ones. Between commits they drift with the settings: `dvc exp run
-S experiment=e4_base` or `-S outputs_dir=elsewhere` changes where every output goes and which
entry runs, while dvc.yaml still declares E1's files; an edit of catalogue.yaml can move an entry
to another dataset. DVC re-runs what the declaration says changed and records the rest as it was,
so the experiment would carry the old results as new, or a stage would write where DVC does not
look. So every command DVC runs first regenerates its dvc.yaml in memory and stops, naming the
stage and the difference, where that differs from the file. The check runs once per state of
the settings, the file and the code (a marker in DVC's temporary folder), not once per stage.

    refuse_stale_pipeline(["train"], config, "params.yaml")   # ConfigError, or nothing (always outside DVC)
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import yaml

from .config import CATALOGUE_FILE, Config, ConfigError
from .dvc_guard import DVC_STAGE_ENV
from .dvcgen import DVC_FILE_LOADER, GENERATORS, MAIN_FILE, generated_file, read_dvc_file

PACKAGE_DIR = Path(__file__).resolve().parent
VERIFIED_DIR = Path(".dvc") / "tmp" / "cnnlab-verified"  # DVC's own scratch folder: git and DVC ignore it


def running_stage() -> tuple[str, str] | None:
    """(dvc.yaml file relative to the repository, stage name) of the stage DVC is running, if any.
    DVC sets DVC_STAGE to the stage's address: `train`, or `experiments/dvc.yaml:train-e4_base`."""
    address = os.environ.get(DVC_STAGE_ENV, "")
    if not address:
        return None
    dvc_file, _, name = address.rpartition(":")
    return dvc_file or MAIN_FILE, name


def state_key(root: Path, dvc_file: str) -> str:
    """A digest of everything the file is generated from, and of the file itself."""
    digest = hashlib.sha256()
    sources = [root / "params.yaml", root / CATALOGUE_FILE, root / dvc_file, *sorted(PACKAGE_DIR.rglob("*.py"))]
    for path in sources:
        digest.update(str(path).encode() + b"\0" + (path.read_bytes() if path.is_file() else b"") + b"\0")
    return digest.hexdigest()


def first_difference(expected: dict[str, Any], found: dict[str, Any]) -> str:
    """Where the file's stages differ from the generated ones, in a few words."""
    expected_stages, found_stages = expected.get("stages", {}), found.get("stages", {})
    for name, entry in expected_stages.items():
        if name not in found_stages:
            return f"it has no stage `{name}`"
        found_entry = found_stages[name]
        fields = [key for key in dict.fromkeys([*entry, *found_entry]) if entry.get(key) != found_entry.get(key)]
        if fields:
            return f"stage `{name}`: its {', '.join(fields)} differ"
    extra = [name for name in found_stages if name not in expected_stages]
    return f"its stage `{extra[0]}` is generated no more" if extra else "its comments differ"


def refuse_stale_pipeline(stages: list[str] | tuple[str, ...], config: Config, params: str | Path) -> None:
    """ConfigError when DVC runs ``stages`` as a stage of a generated dvc.yaml that the settings
    beside ``params`` (and this code) would generate otherwise; nothing outside DVC. (``config``:
    the run's, resolved already; the file is generated from the settings files themselves.)"""
    stage_address = running_stage()
    if not stages or stage_address is None or stage_address[0] not in GENERATORS:
        return
    dvc_file, name = stage_address
    root = Path(params).resolve().parent
    path = root / dvc_file
    marker = root / VERIFIED_DIR / state_key(root, dvc_file)
    if marker.exists() or not path.is_file():
        return
    undo = f"undo the change (`git checkout params.yaml {CATALOGUE_FILE}`, or set it back with -S)"
    try:
        expected = generated_file(root, dvc_file)
    except ConfigError as err:
        raise ConfigError(f"DVC runs stage `{name}` of {dvc_file}, but the settings no longer generate that file: "
                          f"{err}. Fix: {undo}") from err
    if expected != path.read_text():
        difference = first_difference(yaml.load(expected, Loader=DVC_FILE_LOADER), read_dvc_file(path))
        raise ConfigError(
            f"DVC runs stage `{name}` of {dvc_file}, which is not what params.yaml, {CATALOGUE_FILE} and the code "
            f"generate now ({difference}): the run would be recorded under declarations that no longer hold. "
            f"Fix: {undo}; or, where the change is meant to stay, regenerate the dvc.yaml files with "
            "`cnnlab dvc-yaml` and commit them")
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
