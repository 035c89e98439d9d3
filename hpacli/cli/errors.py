"""One place where errors become messages: HpaError (and a few well-known others)
are printed as one red line and exit with status 2, never as a traceback."""

from __future__ import annotations

import click
from rich.console import Console

from ..errors import HpaError

_err = Console(stderr=True)


class HpaClickError(click.ClickException):
    exit_code = 2

    def show(self, file=None) -> None:  # noqa: ARG002 - click's signature
        _err.print(f"[bold red]error:[/] {self.message}", highlight=False)


def translate(exc: BaseException) -> click.ClickException | None:
    """Map a known exception to a ClickException, or None to let it propagate."""
    if isinstance(exc, HpaError):
        return HpaClickError(str(exc))
    if isinstance(exc, FileNotFoundError):
        return HpaClickError(f"file not found: {exc.filename or exc}")
    if isinstance(exc, PermissionError):
        return HpaClickError(f"permission denied: {exc.filename or exc}")
    if isinstance(exc, MemoryError):
        return HpaClickError("out of memory; try a smaller --batch-size or fewer --workers")
    return None
