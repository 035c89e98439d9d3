"""Model checkpoints named on the command line."""

from __future__ import annotations

import glob
import os
from pathlib import Path

from ..errors import InputError


def split_model_args(models) -> list[str]:
    """``--models`` values → one glob or path each: a value may hold several separated by
    commas (``'a.pt,b.pt'``), the option may be repeated, or both. A value that is an
    existing file as a whole is kept whole (a path with a comma in its name)."""
    if isinstance(models, (str, os.PathLike)):
        models = [models]
    out: list[str] = []
    for m in models:
        m = str(m).strip()
        if "," in m and not Path(m).exists():
            out.extend(part.strip() for part in m.split(",") if part.strip())
        elif m:
            out.append(m)
    return out


def expand_model_paths(models) -> list[str]:
    """Globs and paths (a list and/or strings with commas) → the matching files, in order,
    each once."""
    out: list[str] = []
    for m in split_model_args(models):
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
