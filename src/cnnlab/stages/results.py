"""``cnnlab results``: rewrite the generated blocks of README.md and docs/RESULTS.md from the committed files."""

from __future__ import annotations

from pathlib import Path

from ..results import DOCUMENTS, regenerate


def write_results(root: Path, check: bool = False) -> list[Path]:
    """The documents whose blocks differ from their files; rewritten unless ``check``."""
    stale = []
    for relative in DOCUMENTS:
        path = root / relative
        text = path.read_text()
        fresh = regenerate(text, root)
        if fresh != text:
            stale.append(path)
            if not check:
                path.write_text(fresh)
    return stale
