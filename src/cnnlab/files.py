"""Reading and writing the JSON files stages meet in."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_json(path: Path, payload: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


def read_json(path: Path, produced_by: str) -> Any:
    """A stage's input; missing, it names the stage that writes it."""
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; run `cnnlab {produced_by}` (or `dvc repro`) first")
    return json.loads(path.read_text())
