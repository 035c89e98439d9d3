"""One place where errors become messages: HpaError (and a few well-known others)
are printed as one red line and exit with status 2, never as a traceback."""

from __future__ import annotations

import errno

from rich.console import Console

from ..errors import HpaError

_err = Console(stderr=True)
_OS_MESSAGES = {
    errno.ENAMETOOLONG: "a file name is too long (file systems allow 255 bytes)",
    errno.ENOSPC: "no space left on the device",
    errno.EROFS: "the file system is read-only",
    errno.EEXIST: "a file is in the way",
}


def message_for(exc: BaseException) -> str | None:
    """The one-line message for a known exception, or None to let it propagate."""
    if isinstance(exc, HpaError):
        return str(exc)
    if isinstance(exc, FileNotFoundError):
        return f"file not found: {exc.filename or exc}"
    if isinstance(exc, PermissionError):
        return f"permission denied: {exc.filename or exc}"
    if isinstance(exc, IsADirectoryError):
        return f"{exc.filename or exc} is a folder; give a file"
    if isinstance(exc, NotADirectoryError):
        return f"{exc.filename or exc}: part of this path is a file, not a folder"
    if isinstance(exc, OSError) and exc.errno in _OS_MESSAGES:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{_OS_MESSAGES[exc.errno]}{where}"
    if isinstance(exc, MemoryError):
        return "out of memory; try a smaller --batch-size or fewer --workers"
    return None


def report(message: str) -> None:
    _err.print(f"[bold red]error:[/] {message}", highlight=False, markup=True, soft_wrap=True)
