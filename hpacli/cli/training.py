"""What `hpa train-image` and `hpa train-cell` share around the trainer: rank-0-only
output under torchrun, one progress display, the closing line."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


def is_rank0() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


@contextmanager
def training_display(quiet: bool) -> Iterator[tuple[object, object]]:
    """``(progress, log)`` for a training run; only rank 0 shows anything."""
    from ..progress import console, make_progress

    rank0 = is_rank0()

    def log(msg: str) -> None:
        if rank0 and not quiet:
            console.print(msg, highlight=False)

    with make_progress(disable=quiet or not rank0) as progress:
        yield progress, log


def report_trained(what: str, fold: int, summary, unit: str, out) -> None:
    """The closing line of a training run (rank 0 only)."""
    from ..progress import console

    if not is_rank0():
        return
    best = summary.best_value
    best_txt = (f"best {summary.best_metric} {best:.4f} (epoch {summary.best_epoch})" if best is not None
                else "no validation score")
    console.print(
        f"[green]trained[/] {what} fold {fold}: {summary.step} optimizer step(s), "
        f"{summary.images_seen} {unit}; {best_txt}; checkpoints in {out}",
        highlight=False,
    )
