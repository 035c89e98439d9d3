"""The block loop of the cell stages: cells in BlockWork blocks, crops cut by loader workers.

A stage adds each block it has to do with the crop units of its cells
(:meth:`BlockLoop.add`: one unit per model input of the block, e.g. per fold model, or per
input size), then calls :meth:`BlockLoop.run` with three functions of its own: a new
buffer for a block, what to do with a batch (the forward pass, into the buffer), and how
to write a finished block's rows. Each :class:`Batch` carries the block, the unit's key,
the cells-table rows and their uint8 crops, and the rows of images that could not be read
(each reported once per block). When every unit of a block has been fed, the block's rows
are written and then its done marker (``BlockWork``), so a kill leaves each block done or
to redo. Problems (one text per unreadable image) are collected in
:attr:`BlockLoop.problems` (at most :data:`MAX_PROBLEMS`, each once). :func:`close_run`
ends the stage's record: done when every block of every shard is, else still running.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..data.crops import CellBatches, CropUnit, TileFill, make_loader
from ..store.work import Block

MAX_PROBLEMS = 1000


@dataclass
class Batch:
    block: Block
    key: Any
    rows: np.ndarray  # int64 cells-table rows of ``x``
    x: Any  # uint8 tensor [b, 4, S, S]
    skipped: np.ndarray  # rows of unreadable images, new in this block
    block_done: bool


class BlockLoop:
    def __init__(self, store_path, batch_size: int, workers: int = 2, pin_memory: bool = False) -> None:
        self.store_path = store_path
        self.batch_size = int(batch_size)
        self.workers = int(workers)
        self.pin_memory = pin_memory
        self.units: list[CropUnit] = []
        self._left: dict[int, int] = {}
        self._skipped: dict[int, set] = {}
        self.problems: list[str] = []

    def add(self, block: Block, units: list[tuple[Any, np.ndarray, int | None, int, Callable | None]]) -> None:
        """Queue ``block`` with its units ``(key, rows, work_size, out_size, transform)``
        (transform None: the pseudo-labelling tile fill)."""
        self._left[block.index] = len(units)
        for key, rows, work_size, out_size, transform in units:
            self.units.append(CropUnit(np.asarray(rows, dtype=np.int64), work_size=work_size, out_size=out_size,
                                       tag=(block, key), transform=transform))

    @property
    def n_cells(self) -> int:
        """Cells queued, each counted once per block (units of one block may share rows)."""
        per_block: dict[int, set] = {}
        for u in self.units:
            per_block.setdefault(u.tag[0].index, set()).update(np.asarray(u.rows).tolist())
        return sum(len(v) for v in per_block.values())

    def batches(self) -> Iterator[Batch]:
        if not self.units:
            return
        ds = CellBatches(self.store_path, self.units, TileFill(), self.batch_size)
        loader = make_loader(ds, workers=min(self.workers, len(self.units)), pin_memory=self.pin_memory)
        for raw in loader:
            block, key = self.units[raw["unit"]].tag
            seen = self._skipped.setdefault(block.index, set())
            skipped = [int(r) for r in raw["skipped"].numpy().tolist() if int(r) not in seen]
            seen.update(skipped)
            for problem in raw["problems"]:
                if len(self.problems) < MAX_PROBLEMS and problem not in self.problems:
                    self.problems.append(problem)
            done = False
            if raw["end"]:
                self._left[block.index] -= 1
                done = self._left[block.index] == 0
            yield Batch(block, key, raw["rows"].numpy(), raw["x"], np.asarray(skipped, dtype=np.int64), done)
            if done:
                self._skipped.pop(block.index, None)


    def run(self, work, new_buffer: Callable, on_batch: Callable, write_block: Callable) -> int:
        """Feed every batch to ``on_batch(batch, buffer)`` with its block's buffer
        (``new_buffer(block)``); write each finished block (``write_block(block, buffer)``),
        then mark it done in ``work``. Returns the number of blocks finished."""
        pending: dict[int, Any] = {}
        finished = 0
        for batch in self.batches():
            b = batch.block
            if b.index not in pending:
                pending[b.index] = new_buffer(b)
            on_batch(batch, pending[b.index])
            if batch.block_done:
                write_block(b, pending.pop(b.index))
                work.mark_done(b)
                finished += 1
        return finished


def close_run(stage, summary, work) -> None:
    """Close a block stage's record with its summary: ``done`` when every block is done
    (all shards), else ``running`` (other shards still to finish)."""
    summary.complete = work.all_done()
    stage.finish("done" if summary.complete else "running", **summary.as_dict())


@contextlib.contextmanager
def on_device(models, device):
    """Models moved to ``device`` in eval mode for the block, back to the CPU after. Weights go
    channels-last (NHWC), as in training (``benchmarks/channels_last.py`` compares the two
    layouts on the machine at hand)."""
    import torch

    for m in models:
        m.to(device, memory_format=torch.channels_last).eval()
    try:
        yield
    finally:
        for m in models:
            m.to("cpu")
        if device.type == "cuda":
            import torch

            torch.cuda.empty_cache()
