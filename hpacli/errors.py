"""Exceptions that the CLI turns into one-line messages (see cli/errors.py), and the
exit statuses of ``hpa``.

Exit status of every ``hpa`` command:

* ``EXIT_OK`` (0): done.
* ``EXIT_PROBLEMS`` (1): a check ran and found problems (``hpa submit --check``). Python
  itself also exits 1 on an unexpected exception (a traceback): that is a bug to report.
* ``EXIT_USAGE`` (2): refused before anything changed: the command line is wrong (Click's
  and Typer's usage errors: unknown option, bad value) or what it points at cannot be
  used (a bad option value, a missing or hostile input file, a path, a name, a store that
  is missing, damaged or not ready for this stage). One line says what to do. Every
  :class:`HpaError` raised before a stage starts its work exits with it; the project's
  rule is that bad input exits 2.
* ``EXIT_RUNTIME`` (3): a stage started its work and failed while working (its record in
  ``hpa info`` says ``failed`` and why; run it again to resume), or the system failed
  under it (no space left, a read-only file system, out of memory). One line, no traceback.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_USAGE = 2
EXIT_RUNTIME = 3


class HpaError(Exception):
    """An error the user can act on; its text is shown without a traceback. Exits with
    ``EXIT_USAGE`` (refused) unless it ended a stage's work (``begin_stage`` marks it
    ``EXIT_RUNTIME``)."""

    exit_code = EXIT_USAGE


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
