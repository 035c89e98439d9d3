"""One place where errors become messages: HpaError (and a few well-known others)
are printed as one red line and exit with ``EXIT_RUNTIME`` (3; see hpacli/errors.py),
never as a traceback."""

from __future__ import annotations

from rich.console import Console

from ..errors import EXIT_RUNTIME, HpaError

_err = Console(stderr=True)


def message_for(exc: BaseException) -> str | None:
    """The one-line message for a known exception, or None to let it propagate."""
    if isinstance(exc, HpaError):
        return str(exc)
    if isinstance(exc, FileNotFoundError):
        return f"file not found: {exc.filename or exc}"
    if isinstance(exc, PermissionError):
        return f"permission denied: {exc.filename or exc}"
    if isinstance(exc, MemoryError):
        return "out of memory; try a smaller --batch-size or fewer --workers"
    return None


def exit_code_for(exc: BaseException) -> int:
    """The exit status for an exception that :func:`message_for` turned into a message."""
    code = getattr(exc, "exit_code", None) if isinstance(exc, HpaError) else None
    return code if isinstance(code, int) else EXIT_RUNTIME


def report(message: str) -> None:
    _err.print(f"[bold red]error:[/] {message}", highlight=False, markup=True, soft_wrap=True)
