"""Reading and writing the JSON files stages meet in, and checking the SQLite stores beside them."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

SQLITE_PROBE_TIMEOUT_S = 5  # a store locked by a live writer longer than this is taken as healthy


def write_json(path: Path, payload: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


def record_stage_time(path: Path, stage: str, wall_seconds: float, machine: dict[str, Any]) -> Path:
    """Add one stage's wall time to the run's ``timings.json`` (the stages of a run share it)."""
    timings = json.loads(path.read_text()) if path.exists() else {}
    timings[stage] = {"wall_seconds": round(wall_seconds, 3),
                      "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine}
    return write_json(path, timings)


def read_json(path: Path, produced_by: str) -> Any:
    """A stage's input; missing, it names the stage that writes it."""
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; run `cnnlab {produced_by}` (or `dvc repro`) first")
    return json.loads(path.read_text())


def sqlite_damage(path: Path) -> str:
    """Why the SQLite file at ``path`` cannot be used ("" when it can, does not exist yet, or is
    locked by a live writer): not a database, or pages ``PRAGMA quick_check`` finds broken (it
    reads every page: milliseconds for a megabyte). SQLite keeps no checksums, so a changed value
    inside a row still passes. Opened read-write (never created): a writer killed mid-transaction
    leaves a hot journal, which only a read-write connection may roll back; read-only, SQLite
    refuses with "attempt to write a readonly database" although nothing is damaged."""
    if not path.exists():
        return ""
    try:
        with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True,
                                     timeout=SQLITE_PROBE_TIMEOUT_S)) as db:
            problems = [row[0] for row in db.execute("PRAGMA quick_check").fetchall()]
    except sqlite3.DatabaseError as err:  # "file is not a database", "database disk image is malformed"
        return "" if "locked" in str(err) else str(err)
    return "" if problems == ["ok"] else "; ".join(problems[:3])
