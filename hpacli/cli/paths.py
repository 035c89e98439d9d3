"""Checks of output paths a user passes, made before a command changes anything."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError

MAX_NAME_BYTES = 255


def check_output_file(path: Path, option: str) -> Path:
    """InputError (one line) unless ``path`` can be written as a file: not a folder, every
    name within 255 bytes, and its nearest existing parent a writable folder. Creates nothing."""
    path = Path(path)
    for part in path.parts:
        if len(os.fsencode(part)) > MAX_NAME_BYTES:
            raise InputError(f"{option} {path}: a name in it is longer than {MAX_NAME_BYTES} bytes")
    if path.is_dir():
        raise InputError(f"{option} {path} is a folder; give a file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise InputError(f"{option} {path} is not writable")
    parent = path.parent if str(path.parent) else Path(".")
    while not parent.exists():
        if parent.is_symlink():  # a dangling link: mkdir would fail
            raise InputError(f"{option} {path}: {parent} is a broken link")
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"{option} {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{option} {path}: the folder {parent} is not writable")
    return path
