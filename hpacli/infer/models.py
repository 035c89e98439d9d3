"""Model checkpoints named on the command line."""

from __future__ import annotations

import glob
import os
from pathlib import Path

from ..errors import InputError


def expand_model_paths(models) -> list[str]:
    """Globs and paths (a list, or one string with commas; list items may hold commas too)
    → the matching files, in order, each once."""
    if isinstance(models, (str, os.PathLike)):
        models = [models]
    parts = [p for m in models for p in str(m).split(",") if p.strip()]
    out: list[str] = []
    for m in parts:
        m = m.strip()
        hits = sorted(glob.glob(m)) if any(ch in m for ch in "*?[") else ([m] if Path(m).exists() else [])
        if not hits:
            raise InputError(f"no model checkpoint matches {m!r}")
        out.extend(hits)
    seen: set[str] = set()
    return [p for p in out if not (p in seen or seen.add(p))]


def file_record(path: str) -> dict:
    """A model file as it decides a stage's output: its path, size and modification time."""
    st = os.stat(path)
    return {"path": str(path), "bytes": int(st.st_size), "mtime": int(st.st_mtime)}
