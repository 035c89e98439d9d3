"""One place where errors become messages: HpaError (and a few well-known others)
are printed as one red line, never as a traceback, and exit with 2 (refused) or 3 (failed
while working, or the system failed); see hpacli/errors.py."""

from __future__ import annotations

import errno

from rich.console import Console

from ..errors import EXIT_RUNTIME, EXIT_USAGE, HpaError

_err = Console(stderr=True)
_SYSTEM_FAILURES = (errno.ENOSPC, errno.EROFS, errno.EIO)  # not the user's input: EXIT_RUNTIME
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


def exit_code_for(exc: BaseException) -> int:
    """The exit status for an exception that :func:`message_for` turned into a message."""
    if isinstance(exc, HpaError):
        code = getattr(exc, "exit_code", None)
        return code if isinstance(code, int) else EXIT_USAGE
    if isinstance(exc, MemoryError) or (isinstance(exc, OSError) and exc.errno in _SYSTEM_FAILURES):
        return EXIT_RUNTIME
    return EXIT_USAGE  # a path the user gave: missing, a folder, no permission, a name too long


def report(message: str) -> None:
    _err.print(f"[bold red]error:[/] {message}", highlight=False, markup=True, soft_wrap=True)
