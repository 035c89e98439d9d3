"""Exceptions that the CLI turns into one-line messages (see cli/errors.py), and the
exit statuses of ``hpa``.

Exit status of every ``hpa`` command:

* ``EXIT_OK`` (0): done.
* ``EXIT_PROBLEMS`` (1): a check ran and found problems (``hpa submit --check``). Python
  itself also exits 1 on an unexpected exception (a traceback): that is a bug to report.
* ``EXIT_USAGE`` (2): the command line is wrong (unknown option, bad value, missing
  argument); Click's and Typer's convention for usage errors.
* ``EXIT_RUNTIME`` (3): the command could not do its work for a reason the user can fix
  (a missing store, a bad input file, an unknown backbone, ...): one line, no traceback.
  Every :class:`HpaError` exits with it.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_USAGE = 2
EXIT_RUNTIME = 3


class HpaError(Exception):
    """An error the user can act on; its text is shown without a traceback."""

    exit_code = EXIT_RUNTIME


class StoreError(HpaError):
    """The store is missing, of an unknown schema, or inconsistent."""


class StoreVersionError(StoreError):
    """The store was written by a newer schema than this hpacli understands."""


class UnknownNameError(HpaError, KeyError):
    """A backbone, segmenter, denoiser, loss, ... name that no plugin registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class InputError(HpaError):
    """Bad input data: a missing or unreadable image, a malformed CSV, a bad label."""


class PluginError(HpaError):
    """A plugin failed to load or registered something invalid."""
