"""Resumable, shardable work: items processed in blocks, one done marker per block.

A stage that writes per-item results sizes its output arrays once (``Store.ensure_array``)
with axis-0 chunks that divide the block size, then loops over ``work.todo(shard)``:
compute a block, write its rows, ``work.mark_done(block)``. A shard only ever writes its
own blocks' chunks, so ``--shard i/n`` processes run at once without locks, and a kill
at any moment leaves each block either done or to be redone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import HpaError


@dataclass(frozen=True)
class Shard:
    index: int = 0
    count: int = 1
    origin: str = field(default="", compare=False)  # "torchrun", "SLURM job array", ... when read from the environment

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def describe(self) -> str:
        return f"shard {self}" + (f" (from {self.origin})" if self.origin else "")


def parse_shard(text: str | None, env=None) -> Shard:
    """``"i/n"`` → Shard(i, n) with 0 ≤ i < n. ``"auto"`` → this process's part as its
    launcher says (torchrun, a SLURM job array, srun: :mod:`hpacli.launch`), the whole job
    when none does. ``None`` (no ``--shard``) → the same for torchrun and job arrays only,
    else the whole job."""
    from ..launch import parts_from_env

    if text is None or str(text).strip() == "" or str(text).strip().lower() == "auto":
        auto = text is not None and str(text).strip().lower() == "auto"
        found = parts_from_env(env, srun=auto)
        if found is None:
            return Shard()
        return Shard(found[0], found[1], found[2])
    try:
        i, n = (int(v) for v in str(text).split("/"))
    except ValueError:
        raise HpaError(f"--shard must look like i/n (e.g. 0/4) or auto, got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise HpaError(f"--shard {text}: need 0 <= i < n")
    return Shard(i, n)


@dataclass(frozen=True)
class Block:
    index: int
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start


class BlockWork:
    """Done markers for ``n_items`` items in blocks of ``block_size`` at ``{key}/_done``.

    ``per_file`` consecutive blocks share the files of the stage's arrays (Zarr shards of
    ``per_file * block_size`` rows): ``todo(shard)`` hands out whole files, so two processes
    never write one file, and the done markers are chunked the same way. A store's existing
    markers keep the ``block_size`` and ``per_file`` they were made with."""

    def __init__(self, store, key: str, n_items: int, block_size: int, per_file: int = 1) -> None:
        self.store = store
        self.key = f"{key}/_done"
        self.n_items = int(n_items)
        self.block_size = int(block_size)
        self.n_blocks = (self.n_items + self.block_size - 1) // self.block_size
        self.per_file = max(1, int(per_file))
        if store.has(self.key):
            attrs = store.attrs(self.key)
            if int(attrs.get("block_size", -1)) != self.block_size:
                raise HpaError(
                    f"{key} was started with blocks of {attrs.get('block_size')} items; "
                    f"resume with the same setting or start over with --overwrite"
                )
            self.per_file = max(1, int(attrs.get("per_file", 1)))
        if store.mode != "r":
            self._done = store.ensure_array(
                self.key,
                (max(self.n_blocks, 1),),
                "bool",
                (self.per_file,),
                encoding="block-done-markers",
                fill_value=False,
                attrs={"block_size": self.block_size, "per_file": self.per_file},
            )
        else:
            self._done = store.array(self.key)

    @staticmethod
    def existing_per_file(store, key: str) -> int | None:
        """``per_file`` of the markers at ``{key}/_done`` (1 for markers made before files
        held several blocks), or None when there are none yet."""
        if not store.has(f"{key}/_done"):
            return None
        return max(1, int(store.attrs(f"{key}/_done").get("per_file", 1)))

    @property
    def rows_per_file(self) -> int:
        return self.block_size * self.per_file

    def owner(self, b: int, shard: Shard) -> bool:
        """Whether ``shard`` does block ``b`` (every n-th file of blocks)."""
        return (int(b) // self.per_file) % shard.count == shard.index

    def block(self, b: int) -> Block:
        start = b * self.block_size
        return Block(b, start, min(start + self.block_size, self.n_items))

    def done_mask(self) -> np.ndarray:
        if self.n_blocks == 0:
            return np.zeros(0, dtype=bool)
        return np.asarray(self._done[: self.n_blocks]).astype(bool)

    def todo(self, shard: Shard = Shard()) -> list[Block]:
        done = self.done_mask()
        return [self.block(b) for b in range(self.n_blocks) if self.owner(b, shard) and not done[b]]

    def mark_done(self, block: Block | int) -> None:
        b = block.index if isinstance(block, Block) else int(block)
        self._done[b] = True

    def mark_undone(self, block: Block | int) -> None:
        b = block.index if isinstance(block, Block) else int(block)
        if b < self._done.shape[0]:
            self._done[b] = False

    @property
    def n_done(self) -> int:
        return int(self.done_mask().sum())

    def items_done(self) -> int:
        done = self.done_mask()
        return int(sum(len(self.block(b)) for b in np.flatnonzero(done)))

    def all_done(self) -> bool:
        return bool(self.done_mask().all()) if self.n_blocks else True


def per_file_for(store, key: str, kind: str, block: int) -> int:
    """Blocks per file for the stage at ``key``: what its existing markers say, else the
    store's layout (``images_per_file`` or ``cells_per_file`` / ``block``)."""
    from .core import rows_per_file

    have = BlockWork.existing_per_file(store, key)
    return have if have is not None else rows_per_file(store, kind, block)


def shards_of(chunks: tuple[int, ...], rows: int) -> tuple[int, ...] | None:
    """The shard shape for an array chunked ``chunks`` whose files hold ``rows`` rows (None: one chunk per file)."""
    if rows <= chunks[0]:
        return None
    return (int(rows), *chunks[1:])
