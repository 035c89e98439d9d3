"""Resumable, shardable work: items processed in blocks, one done marker per block.

A stage that writes per-item results sizes its output arrays once (``Store.ensure_array``)
with axis-0 chunks that divide the block size, then loops over ``work.todo(shard)``:
compute a block, write its rows, ``work.mark_done(block)``. A shard only ever writes its
own blocks' chunks, so ``--shard i/n`` processes run at once without locks, and a kill
at any moment leaves each block either done or to be redone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import HpaError


@dataclass(frozen=True)
class Shard:
    index: int = 0
    count: int = 1

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str | None) -> Shard:
    """``"i/n"`` → Shard(i, n) with 0 ≤ i < n; ``None`` → the whole job."""
    if text is None or text == "":
        return Shard()
    try:
        i, n = (int(v) for v in str(text).split("/"))
    except ValueError:
        raise HpaError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
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
    """Done markers for ``n_items`` items in blocks of ``block_size`` at ``{key}/_done``."""

    def __init__(self, store, key: str, n_items: int, block_size: int) -> None:
        self.store = store
        self.key = f"{key}/_done"
        self.n_items = int(n_items)
        self.block_size = int(block_size)
        self.n_blocks = (self.n_items + self.block_size - 1) // self.block_size
        if store.has(self.key):
            attrs = store.attrs(self.key)
            if int(attrs.get("block_size", -1)) != self.block_size:
                raise HpaError(
                    f"{key} was started with blocks of {attrs.get('block_size')} items; "
                    f"resume with the same setting or start over with --overwrite"
                )
        if store.mode != "r":
            self._done = store.ensure_array(
                self.key,
                (max(self.n_blocks, 1),),
                "bool",
                (1,),
                encoding="block-done-markers",
                fill_value=False,
                attrs={"block_size": self.block_size},
            )
        else:
            self._done = store.array(self.key)

    def block(self, b: int) -> Block:
        start = b * self.block_size
        return Block(b, start, min(start + self.block_size, self.n_items))

    def done_mask(self) -> np.ndarray:
        if self.n_blocks == 0:
            return np.zeros(0, dtype=bool)
        return np.asarray(self._done[: self.n_blocks]).astype(bool)

    def todo(self, shard: Shard = Shard()) -> list[Block]:
        done = self.done_mask()
        return [self.block(b) for b in range(self.n_blocks) if b % shard.count == shard.index and not done[b]]

    def mark_done(self, block: Block | int) -> None:
        b = block.index if isinstance(block, Block) else int(block)
        self._done[b] = True

    @property
    def n_done(self) -> int:
        return int(self.done_mask().sum())

    def items_done(self) -> int:
        done = self.done_mask()
        return int(sum(len(self.block(b)) for b in np.flatnonzero(done)))

    def all_done(self) -> bool:
        return bool(self.done_mask().all()) if self.n_blocks else True
