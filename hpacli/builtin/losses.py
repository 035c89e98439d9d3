"""Built-in losses, registered through the plugin hook like any third-party ones.

The names and descriptions are listed here, without importing torch, so that `hpa
plugins` stays fast; ``hpacli.train.losses`` (torch) is imported when a loss is built. A
test checks that this list and ``hpacli.train.losses.BASE_LOSSES`` agree.
"""

from __future__ import annotations

from .. import hookimpl

# name -> description; each also gets a soft- variant (the same as train.losses.BASE_LOSSES)
LOSSES: dict[str, str] = {
    "focal": "focal loss, gamma 2 (seed)",
    "bce": "binary cross-entropy, mean over items and classes",
    "hardlog": "hard-negative log loss (seed)",
    "symmetric-lovasz": "symmetric Lovász hinge per class over the batch (seed)",
    "focal-symmetric-lovasz-hardlog": "0.5 focal + 0.5 symmetric Lovász + 0.5 hard log (seed default)",
}


def _make(name: str, **kwargs):
    from ..train.losses import make_loss

    return make_loss(name, **kwargs)


@hookimpl
def register_losses(register):
    from functools import partial

    for name, description in LOSSES.items():
        register(name, partial(_make, name), description=description)
        register(f"soft-{name}", partial(_make, f"soft-{name}"), description=f"{description}; soft targets")
