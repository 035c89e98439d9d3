"""Per-cell result sets: arrays aligned with the rows of the ``cells`` table.

Pseudo-labels (``labels/<run>``), predictions (``predictions/<name>``), de-noised labels
(``denoise/<run>``), cell folds (``folds/cells/<name>``) and negative scores
(``negatives``) are each one group whose arrays have one row per cell. A
:class:`CellResults` is the one helper they share:

* the group's key and its columns (:class:`Column`: name, dtype, trailing shape, fill,
  encoding stamp, coverage);
* the staleness stamp: the group attribute ``cells_table_id`` names the cells table the
  rows belong to (:data:`STAMP`; ``table_id``, its older spelling, is still read);
  :meth:`CellResults.stale` compares it with the current table;
* done rows: blocks of rows written by ``BlockWork`` (``<group>/_done``);
* :meth:`CellResults.ensure` sizes the columns and stamps the group; a set written in
  blocks by sharded processes (``files_per_block=True``: pseudo-labels, predictions)
  makes its ``BlockWork`` markers first and keeps ``cells_per_file`` rows (the store's
  layout) in one Zarr shard file per column, so each process writes whole files;
  :meth:`CellResults.differs` names the deciding attributes an existing set was made
  with otherwise; :meth:`CellResults.write_rows` / :meth:`CellResults.write_scattered`
  write a block of rows, or rows spread over the table.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import StoreError
from .core import child_key

STAMP = "cells_table_id"
LEGACY_STAMPS = ("table_id",)


def current_table_id(store) -> str | None:
    """The id of the cells table now in the store (None without one)."""
    from .cells import GROUP

    return store.attrs(GROUP).get("table_id") if store.has(GROUP) else None


def stamp_of(attrs: dict) -> str | None:
    """The cells table a result set says it belongs to."""
    for name in (STAMP, *LEGACY_STAMPS):
        if attrs.get(name) is not None:
            return attrs[name]
    return None


def list_sets(store, group: str, probe: str) -> list[str]:
    """Names of the result sets under ``group`` (folders holding the column ``probe``)."""
    folder = store.path / group
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and (p / probe / "zarr.json").exists())


@dataclass(frozen=True)
class Column:
    name: str
    dtype: str
    encoding: str
    tail: tuple[int, ...] = ()
    fill: Any = 0
    coverage: str | None = "done"


class CellResults:
    def __init__(self, store, key: str, columns: Iterable[Column], encoding: str, block: int,
                 files_per_block: bool = False) -> None:
        self.store = store
        self.key = key
        self.columns = {c.name: c for c in columns}
        self.encoding = encoding
        self.block = int(block)
        self.files_per_block = files_per_block  # blocks grouped in shard files (see the module's text)

    # ------------------------------------------------------------------ reading
    @property
    def first(self) -> str:
        return next(iter(self.columns))

    def exists(self) -> bool:
        return self.store.has(f"{self.key}/{self.first}")

    def attrs(self) -> dict:
        """The group's attributes (its stamp checked: another or a newer encoding is refused)."""
        attrs = self.store.attrs(self.key)
        self.store.check_stamp(self.key, self.encoding, attrs)
        return attrs

    def n_rows(self) -> int:
        return int(self.store.array(f"{self.key}/{self.first}").shape[0])

    def stale(self, attrs: dict | None = None) -> bool:
        """True when the rows belong to another cells table than the current one."""
        return stamp_of(attrs if attrs is not None else self.attrs()) != current_table_id(self.store)

    def block_of(self, attrs: dict | None = None) -> int:
        """The block size the rows were written with: the done markers' own (they exist from
        the start of a run, before the group's attributes say it), else the attributes'."""
        done = f"{self.key}/_done"
        if self.store.has(done):
            size = self.store.attrs(done).get("block_size")
            if size is not None:
                return int(size)
        attrs = attrs if attrs is not None else self.attrs()
        return int(attrs.get("block", self.block))

    def work(self, n: int | None = None, attrs: dict | None = None):
        from .work import BlockWork, per_file_for

        block = self.block_of(attrs)
        per_file = per_file_for(self.store, self.key, "cells", block) if self.files_per_block else 1
        return BlockWork(self.store, self.key, self.n_rows() if n is None else n, block, per_file)

    def done_rows(self, attrs: dict | None = None) -> np.ndarray:
        """bool ``[C]``: rows of the blocks that are done."""
        n = self.n_rows()
        block = self.block_of(attrs)
        done = self.work(n, attrs).done_mask()
        return np.repeat(done, block)[:n] if n else np.zeros(0, dtype=bool)

    def status(self) -> dict:
        """The group's attributes plus ``n_cells``, ``blocks``, ``blocks_done``, ``complete``
        and ``stale`` (the cells table was rewritten since)."""
        out = self.attrs()
        n = self.n_rows()
        work = self.work(n, out)
        out.update(n_cells=n, blocks=work.n_blocks, blocks_done=work.n_done, complete=work.all_done(),
                   stale=self.stale(out))
        return out

    def read_done(self, name: str, fill: Any, done: np.ndarray | None = None) -> np.ndarray:
        """Column ``name`` with the rows not done (default: of blocks not done) set to ``fill``."""
        col = self.columns[name]
        out = self.read(name).astype(col.dtype)
        out[~(self.done_rows() if done is None else done)] = fill
        return out

    def require_current(self, message: str) -> None:
        """StoreError(``message``) when the rows belong to another cells table."""
        if self.stale():
            raise StoreError(message)

    def read(self, name: str, rows: slice | None = None) -> np.ndarray:
        """Column ``name`` (all rows, or a slice); lost chunks are refused, not read as fill."""
        key = f"{self.key}/{name}"
        col = self.columns[name]
        if rows is None:
            self.store.require_rows(key)
            return np.asarray(self.store.array(key, encoding=col.encoding)[:])
        self.store.require_rows(key, (rows.start or 0, rows.stop))
        return np.asarray(self.store.array(key, encoding=col.encoding)[rows])

    def column(self, name: str):
        """The column as a (lazy) array, for chunked reads of large columns."""
        col = self.columns[name]
        return self.store.array(f"{self.key}/{name}", encoding=col.encoding)

    def has_column(self, name: str) -> bool:
        return self.store.has(f"{self.key}/{name}")

    # ------------------------------------------------------------------ writing
    def differs(self, attrs: dict, names: Iterable[str], optional: Iterable[str] = ()) -> list[str]:
        """The names among ``names`` whose stored value differs from ``attrs`` (names in
        ``optional`` are skipped when the stored set predates them)."""
        old = self.store.attrs(self.key)
        optional = set(optional)
        return [n for n in names if not (n in optional and n not in old) and old.get(n) != attrs.get(n)]

    def delete(self) -> None:
        self.store.delete(self.key)

    def ensure_columns(self, n_cells: int, widths: dict[str, int] | None = None, chunk: int | None = None) -> None:
        """Create (or grow) every column for ``n_cells`` rows. ``widths`` sets the trailing
        size of columns whose width is chosen per set (embeddings, neighbour lists);
        ``chunk`` the rows per chunk (default: the block)."""
        store = self.store
        parent = self.key.rpartition("/")[0]
        if parent:
            store.group(parent, create=True)
        store.group(self.key, create=True)
        n = max(int(n_cells), 0)
        rows = int(chunk or self.block)
        per_file_rows = rows
        if self.files_per_block and chunk is None:
            from .work import BlockWork, per_file_for

            # the markers first: they fix how many blocks share a file, and the columns' files follow them
            per_file_rows = BlockWork(store, self.key, n, self.block,
                                      per_file_for(store, self.key, "cells", self.block)).rows_per_file
        from .work import shards_of

        for col in self.columns.values():
            tail = (int(widths[col.name]),) if widths and col.name in widths else tuple(col.tail)
            store.ensure_array(f"{self.key}/{col.name}", (n, *tail), col.dtype, (rows, *tail), encoding=col.encoding,
                               fill_value=col.fill, coverage=col.coverage,
                               shards=shards_of((rows, *tail), per_file_rows))

    def ensure(self, n_cells: int, attrs: dict, widths: dict[str, int] | None = None, chunk: int | None = None,
               block: bool = True) -> None:
        """:meth:`ensure_columns`, then stamp the group with its encoding, ``block`` (unless
        ``block=False``), the current cells table (unless ``attrs`` names one) and ``attrs``."""
        self.ensure_columns(n_cells, widths, chunk)
        stamp: dict = {"encoding": self.encoding, "encoding_version": 1}
        if block:
            stamp["block"] = self.block
        if STAMP not in attrs:
            stamp[STAMP] = current_table_id(self.store)
        self.store.update_attrs(self.key, {**stamp, **attrs})

    def write_rows(self, start: int, **values: np.ndarray) -> None:
        """Write rows ``start : start + len`` of the given columns (a whole block: whole chunks)."""
        for name, value in values.items():
            col = self.columns[name]
            value = np.asarray(value, dtype=col.dtype)
            self.store.array(f"{self.key}/{name}")[start:start + len(value)] = value

    def write_scattered(self, rows: np.ndarray, **values: np.ndarray) -> None:
        """Write the given columns at ``rows`` spread over the table (orthogonal selection)."""
        rows = np.asarray(rows, dtype=np.int64)
        for name, value in values.items():
            col = self.columns[name]
            value = np.asarray(value, dtype=col.dtype)
            arr = self.store.array(f"{self.key}/{name}")
            if value.ndim > 1:
                arr.set_orthogonal_selection((rows, slice(None)), value)
            else:
                arr.set_orthogonal_selection(rows, value)

    def existing(self, message: str, others: list[str] | None = None, what: str = "") -> CellResults:
        """This set when it exists, else StoreError(``message``), naming the ``others`` there are."""
        if not self.exists():
            raise StoreError(message + (f"; {what} in the store: {', '.join(others)}" if others else ""))
        return self


__all__ = ["STAMP", "CellResults", "Column", "Kind", "current_table_id", "list_sets", "stamp_of"]


@dataclass(frozen=True)
class Kind:
    """One kind of per-cell result set, named by the user (``labels/<run>``,
    ``predictions/<name>``): where its sets live, their columns, and how to say that one
    is missing."""

    group: str
    columns: tuple[Column, ...]
    encoding: str
    block: int
    what: str  # "pseudo-labels"
    listing: str  # "runs": what the others are called in a message
    command: str  # "hpa pseudolabel --run {name}": how to make one
    name_what: str = "run"  # what a name is called in a message about a bad name
    files_per_block: bool = True  # written in BlockWork blocks by shard processes: blocks share files

    def key(self, name: str) -> str:
        return child_key(self.group, name, self.name_what)

    def results(self, store, name: str, block: int | None = None) -> CellResults:
        return CellResults(store, self.key(name), self.columns, self.encoding, block or self.block,
                           files_per_block=self.files_per_block)

    def names(self, store) -> list[str]:
        return list_sets(store, self.group, self.columns[0].name)

    def require(self, store, name: str) -> CellResults:
        return self.results(store, name).existing(
            f"the store {store.path} has no {self.what} {name!r}; run `{self.command.format(name=name)}`",
            self.names(store), self.listing)

    def status(self, store, name: str) -> dict:
        """:meth:`CellResults.status` of an existing set."""
        return self.require(store, name).status()
