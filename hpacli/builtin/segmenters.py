"""Built-in segmenters, registered through the plugin hook like any third-party ones."""

from __future__ import annotations

from .. import hookimpl


@hookimpl
def register_segmenters(register):
    pass
