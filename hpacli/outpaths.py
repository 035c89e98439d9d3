"""Output paths a user passes (--out, --preview-dir, --overlay-dir, --export, --png):
checked before a stage touches anything, and file names made from image IDs kept inside
their folder.

A stage that deletes or rewrites stored results (``--overwrite``) and writes files after
calls these first, so that a bad path is a one-line error while the store is unchanged.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from .errors import InputError

MAX_FILE_NAME = 120  # well under the 255 bytes file systems allow, leaving room for suffixes
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _existing_parent(path: Path, option: str = "--out") -> Path:
    """The nearest ancestor of ``path`` that exists (``path`` itself when it does)."""
    p = path
    while not p.exists() and p != p.parent:
        if p.is_symlink():  # a dangling link: nothing can be created under it
            raise InputError(f"{option} {path}: {p} is a broken link")
        p = p.parent
    return p


def _check_names(path: Path, option: str) -> None:
    for part in path.parts:
        if len(os.fsencode(part)) > 255:
            raise InputError(f"{option} {path}: a name in it is longer than 255 bytes")


def _check_creatable(path: Path, option: str) -> None:
    base = _existing_parent(path.parent if not path.exists() else path, option)
    if not base.is_dir():
        raise InputError(f"{option} {path}: {base} is a file, so nothing can be created under it")
    if not os.access(base, os.W_OK | os.X_OK):
        raise InputError(f"{option} {path}: no permission to write in {base}")


def check_out_dir(path, option: str = "--out") -> Path:
    """A folder the command will write into: it may be missing (it is created later),
    but must not be a file, nor lie under one, and must be writable."""
    path = Path(path)
    _check_names(path, option)
    if path.exists() and not path.is_dir():
        raise InputError(f"{option} {path} is a file; give a folder")
    _check_creatable(path, option)
    return path


def check_out_file(path, option: str = "--out") -> Path:
    """A file the command will write: not an existing folder, its folder creatable and
    writable, its name not too long."""
    path = Path(path)
    _check_names(path, option)
    if path.is_dir():
        raise InputError(f"{option} {path} is a folder; give a file name, e.g. {path / 'out.csv'}")
    if not path.name or path.name in (".", ".."):
        raise InputError(f"{option} {path}: give a file name")
    _check_creatable(path, option)
    if path.exists() and not os.access(path, os.W_OK):
        raise InputError(f"{option} {path}: no permission to replace it")
    return path


def safe_file_name(text: str, suffix: str = "") -> str:
    """A file name made from ``text`` (an image ID) that stays inside its folder: only
    letters, digits, ``.``, ``-`` and ``_``, no leading dot, at most :data:`MAX_FILE_NAME`
    characters. When anything had to change, a short digest of ``text`` is appended so that
    two IDs never share a name."""
    text = str(text)
    name = _UNSAFE.sub("_", text).lstrip(".")
    if name != text or len(name) > MAX_FILE_NAME or not name:
        digest = hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:10]
        name = f"{name[: MAX_FILE_NAME - 11]}-{digest}" if name else digest
    return name + suffix


__all__ = ["check_out_dir", "check_out_file", "safe_file_name"]
