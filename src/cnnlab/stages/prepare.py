"""``cnnlab prepare``: raw dataset -> stratified train/val/test split in one file."""

from __future__ import annotations

from typing import Any

from ..config import Config
from ..contract import RunFiles
from ..data import SourceContext, load_raw, prepare as split, summarize
from ..data.prepare import save_prepared
from ..files import write_json


def prepare(config: Config) -> dict[str, Any]:
    """The prepared file and its summary; data.classes and data.train_subset are applied when
    stages load it (data.load_view), so one prepared file serves every view of a dataset."""
    files = RunFiles.of(config)
    raw = load_raw(config.data.name, SourceContext.from_config(config.data))
    data = split(raw, config.data.val_fraction, config.data.split_seed)
    save_prepared(data, files.prepared)
    summary = summarize(data)
    write_json(files.data_summary, summary)
    print(f"prepared {data.name}: train {summary['train']}, val {summary['val']}, test {summary['test']}, "
          f"{summary['channels']}x{summary['height']}x{summary['width']} -> {files.prepared}")
    return summary
