"""Built-in losses, registered through the plugin hook like any third-party ones."""

from __future__ import annotations

from .. import hookimpl


@hookimpl
def register_losses(register):
    from functools import partial

    from ..train.losses import BASE_LOSSES, make_loss

    for name, (_fn, description) in BASE_LOSSES.items():
        register(name, partial(make_loss, name), description=description)
        register(f"soft-{name}", partial(make_loss, f"soft-{name}"), description=f"{description}; soft targets")
