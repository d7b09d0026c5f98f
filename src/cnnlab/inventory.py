"""``cnnlab datasets`` and ``cnnlab models``: what this machine can train on, and with what."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import Config
from .files import write_json


def datasets_table(config: Config, names: list[str], per_class: bool = False,
                   json_path: str | None = None) -> list[dict[str, Any]]:
    """One summary row per dataset found (shape, samples per split, provenance)."""
    from .data import DatasetError, SourceContext, list_datasets, load_raw, prepare, summarize

    rows = []
    for name in names or list_datasets():
        ctx = SourceContext.from_config(config.data)
        ctx.download = False  # a summary must not start multi-GB downloads
        try:
            raw = load_raw(name, ctx)
            summary = summarize(prepare(raw, config.data.val_fraction, config.data.split_seed))
            rows.append(summary)
            print(f"{name:20s} {summary['height']:>4d} {summary['width']:>4d} {summary['channels']:>3d} "
                  f"{summary['classes']:>4d} {summary['train']:>7d} {summary['val']:>6d} {summary['test']:>6d}  "
                  f"{summary['provenance'].get('source', '')}", flush=True)
            if per_class:
                for split, counts in summary["per_class"].items():
                    print(f"    {split:5s} " + ", ".join(f"{k}: {v}" for k, v in counts.items()))
        except DatasetError as err:
            print(f"{name:20s} not available: {str(err).splitlines()[0]}", flush=True)
    if json_path:
        write_json(Path(json_path), rows)
    return rows


def models_table() -> None:
    from .models import create_model, list_models, model_entry, total_parameters

    print(f"{'model':20s} {'parameters':>12s}  {'input':12s} description")
    for name in list_models():
        entry = model_entry(name)
        shape = "x".join(map(str, entry.input_shape))
        print(f"{name:20s} {total_parameters(create_model(name)):>12,d}  {shape:12s} {entry.description}")
