"""Exceptions that the CLI turns into one-line messages (see cli/errors.py)."""

from __future__ import annotations


class HpaError(Exception):
    """An error the user can act on; its text is shown without a traceback."""

    exit_code = 2


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
