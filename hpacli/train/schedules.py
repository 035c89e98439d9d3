"""Learning-rate schedules by name: epoch (1-based) → learning rate, times ``lr_mult``.

``adam10`` is the seed's table: epochs 1–2 1e-5, 3–4 5e-6, 5–6 2e-6, 7–8 1e-6, ≥9 5e-7.
The schedule is evaluated at ``epoch + epoch_offset`` (a second run from the weights of a
first one can continue the table). ``constant`` keeps ``base_lr``; ``cosine`` decays
``base_lr`` to 0 over ``epochs`` (half a cosine, evaluated at the epoch's start).
"""

from __future__ import annotations

import math

from ..errors import HpaError

ADAM10 = ((2, 1e-5), (4, 5e-6), (6, 2e-6), (8, 1e-6))
ADAM10_TAIL = 5e-7
BASE_LR = 1e-5


def adam10(epoch: int, epochs: int = 10, base_lr: float = BASE_LR) -> float:
    scale = base_lr / BASE_LR
    for last, lr in ADAM10:
        if epoch <= last:
            return lr * scale
    return ADAM10_TAIL * scale


def constant(epoch: int, epochs: int = 10, base_lr: float = BASE_LR) -> float:
    return base_lr


def cosine(epoch: int, epochs: int = 10, base_lr: float = BASE_LR) -> float:
    frac = min(max(epoch - 1, 0) / max(epochs, 1), 1.0)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * frac))


SCHEDULES = {"adam10": adam10, "constant": constant, "cosine": cosine}


def schedule_names() -> list[str]:
    return sorted(SCHEDULES)


def check_schedule(name: str) -> None:
    if name not in SCHEDULES:
        raise HpaError(f"unknown schedule {name!r}; choose one of {', '.join(schedule_names())}")


def lr_at(
    name: str, epoch: int, lr_mult: float = 1.0, epoch_offset: int = 0, epochs: int = 10, base_lr: float = BASE_LR
) -> float:
    """Learning rate of (1-based) ``epoch`` of this run."""
    check_schedule(name)
    return SCHEDULES[name](epoch + epoch_offset, epochs=epochs + epoch_offset, base_lr=base_lr) * lr_mult
