"""Refuse to run on a prepared dataset that preparing with this run's settings would not give.

A stage loads ``data/prepared/<name>.pt`` as it finds it, and the run records its own settings.
Two ways the file can be another split or another dataset than the run records, without a word:
- run directly with ``-S data.val_fraction=...`` or ``-S data.split_seed=...`` (DVC re-prepares
  when they change; a direct ``cnnlab train`` does not), the run trains and chooses on the
  prepared split and logs the asked-for one;
- MNIST prepared when no datasets directory was set is the embedded 5,000 digits; once
  ``$CNNLAB_DATASETS`` (or ``data.datasets_dir``) is set, preparing gives full MNIST, yet DVC
  sees no change (the variable is no param) and a direct run loads the digits as they are.
The prepared file records both (its ``provenance``: ``split`` and ``embedded``), so a command whose
stages read it checks them before it starts, and names the stage or command that prepares it again.
The check changes no result it lets through, so it is no DVC dependency of any stage.

    refuse_mismatched_prepared(["train"], config, "params.yaml")   # ConfigError, or nothing
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .config import Config, ConfigError
from .contract import file_path, stage
from .dvc_guard import cached_outs


def prepared_provenance(path: Path) -> dict[str, Any] | None:
    """The provenance a prepared file stores, read without loading its images (memory-mapped);
    None where the file is missing or unreadable: the stage that loads it says why."""
    import torch  # the stage that follows imports it anyway; the CLI's other commands need not

    if not path.is_file():
        return None
    try:
        return torch.load(path, mmap=True, weights_only=True).get("provenance") or {}
    except Exception:
        return None


def split_mismatches(provenance: dict[str, Any], config: Config) -> list[str]:
    """The split settings the file was prepared with that differ from ``config``'s."""
    split = provenance.get("split") or {}  # files prepared before the split was recorded: unchecked
    recorded = {"val_fraction": split.get("val_fraction"), "split_seed": split.get("seed")}
    return [f"data.{key}={value} (this run asks for {getattr(config.data, key)})" for key, value in recorded.items()
            if value is not None and value != getattr(config.data, key)]


def embedded_in_place_of_mnist(provenance: dict[str, Any], config: Config) -> str:
    """Where the file is the embedded digits that MNIST fell back to, and a datasets directory is
    set now (so preparing would give full MNIST): that directory; else ""."""
    from .data.base import SourceContext  # the stage that follows imports the data package anyway

    datasets_dir = SourceContext.from_config(config.data).datasets_dir
    # Only `mnist` falls back, and only with no datasets directory; `mnist_digits` is the digits on purpose.
    return str(datasets_dir) if provenance.get("embedded") and config.data.name == "mnist" and datasets_dir else ""


def refuse_mismatched_prepared(stages: list[str] | tuple[str, ...], config: Config, params: str | Path) -> None:
    """ConfigError when ``stages`` would read a prepared dataset made with other settings than
    ``config``'s; nothing when they prepare it first, read none, or it is not there yet."""
    if not stages or stages[0] == "prepare" or not any("prepared" in stage(s).inputs for s in stages):
        return
    path = file_path(config, "prepared")
    provenance = prepared_provenance(path)
    if provenance is None:
        return
    split = split_mismatches(provenance, config)
    if split:
        raise ConfigError(
            f"{path} was prepared with {' and '.join(split)}: this run would train and choose on the prepared split "
            "and record its own. Fix: run it through DVC, which prepares that split first (`dvc exp run -S ...` "
            "with the same settings), or prepare the split into a folder of its own: `cnnlab prepare` and this "
            "command, both with the same -S settings and `-S data.prepared_dir=<folder>`")
    datasets_dir = embedded_in_place_of_mnist(provenance, config)
    if datasets_dir:
        root = Path(os.path.abspath(Path(params).parent))
        owner = next((out for out in cached_outs(root) if out.path == Path(os.path.abspath(path))), None)
        again = (f"`dvc repro --force --single-item {owner.dvc_file}:{owner.stage}`, then `dvc repro`" if owner
                 else "`cnnlab prepare` with this run's settings")
        raise ConfigError(
            f"{path} holds the embedded 5,000 MNIST digits, prepared when no datasets directory was set; one is set "
            f"now ({datasets_dir}), from which preparing gives full MNIST, and this run would train on the digits. "
            f"Fix: prepare it again: {again}; or use the digits on purpose: `-S data.name=mnist_digits`")
