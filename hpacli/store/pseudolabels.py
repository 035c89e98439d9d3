"""Cell pseudo-labels and embeddings (``hpa pseudolabel``), one run per name.

Layout (group ``labels/<run>``; rows aligned with the cells table)::

    labels/<run>/probs       float32 [C, 19]  sigmoid averaged over views; NaN = not labelled
    labels/<run>/embeddings  float16 [C, D]   embedding averaged over views; 0 = not labelled
    labels/<run>/model       int8    [C]      fold of the model that labelled the cell; -1 = none
    labels/<run>/_done       bool    [blocks] BlockWork done markers (block = BLOCK rows)

Arrays are chunked by ``BLOCK`` rows, so ``--shard i/n`` processes write disjoint
chunks. A cell is *labelled* when its block is done and ``model >= 0`` (cells of test
images, unused images and skipped duplicates are never labelled).

Group attributes: ``encoding`` ``hpacli-pseudolabels`` v1, ``cells_table_id`` (the
cells table the rows belong to), ``models`` (``{fold: {"path", "bytes", "mtime"}}``),
``views``, ``img_size`` (``{fold: int}``), ``embedding_dim``, ``block``, and the stage's
``provenance`` record.

Readers (stable; the de-noising stage and the cell trainer build on them):
:func:`list_runs`, :func:`run_info`, :func:`read_probs`, :func:`read_model`,
:func:`labelled_mask`, :func:`iter_embeddings`, :func:`read_embeddings`.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ..classes import N_CLASSES
from ..errors import StoreError
from .cellresults import STAMP, Column, Kind, current_table_id

GROUP = "labels"
BLOCK = 1024
ENCODING = "hpacli-pseudolabels"
COLUMNS = (
    Column("probs", "float32", "cell-probabilities", (N_CLASSES,), float("nan")),
    Column("embeddings", "float16", "cell-embeddings", (0,), 0.0),  # width: the models' embedding size
    Column("model", "int8", "fold-index", (), -1),
)


KIND = Kind(GROUP, COLUMNS, ENCODING, BLOCK, "pseudo-labels", "runs", "hpa pseudolabel --run {name}")
run_key = KIND.key
results = KIND.results
list_runs = KIND.names  # the runs in the store (complete or not)
_require = KIND.require
# the run's attributes (models, views, img_size, cells_table_id, provenance, ...) plus n_cells,
# blocks_done, blocks, complete and stale (True when the cells table was rewritten since)
run_info = KIND.status


# ---------------------------------------------------------------------------- readers
def check_current(store, run: str) -> None:
    """Raise when the run was computed for another cells table (segmentation redone)."""
    _require(store, run).require_current(
        f"pseudo-labels {run!r} belong to an older cells table (segmentation was redone); "
        f"run `hpa pseudolabel --run {run} --overwrite`")


def read_model(store, run: str) -> np.ndarray:
    """int8 ``[C]``: the fold of the model that labelled each cell, -1 where none did
    (yet: rows of blocks not done read -1)."""
    return _require(store, run).read_done("model", -1)


def labelled_mask(store, run: str) -> np.ndarray:
    """bool ``[C]``: cells whose pseudo-labels are stored."""
    return read_model(store, run) >= 0


def read_probs(store, run: str) -> np.ndarray:
    """float32 ``[C, 19]`` probabilities; rows of unlabelled cells are NaN."""
    return _require(store, run).read_done("probs", np.nan, done=labelled_mask(store, run))


def embedding_dim(store, run: str) -> int:
    return int(_require(store, run).column("embeddings").shape[1])


def iter_embeddings(
    store, run: str, rows: np.ndarray | None = None, chunk: int = 65536
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(row_indices int64 [k], embeddings float16 [k, D])`` chunk by chunk, so that
    millions of cells never sit in memory at once. ``rows`` (sorted or not; bool mask or
    indices) selects cells; the default is every cell. Embeddings of unlabelled cells
    are zeros (use :func:`labelled_mask` to select)."""
    res = _require(store, run)
    store.require_rows(f"{res.key}/embeddings")
    arr = res.column("embeddings")
    n = int(arr.shape[0])
    if rows is None:
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            yield np.arange(start, stop, dtype=np.int64), np.asarray(arr[start:stop])
        return
    rows = np.asarray(rows)
    if rows.dtype == bool:
        rows = np.flatnonzero(rows)
    rows = rows.astype(np.int64)
    if len(rows) and (rows.min() < 0 or rows.max() >= n):
        raise StoreError(f"row indices outside 0..{n - 1}")
    for start in range(0, len(rows), chunk):
        sel = rows[start : start + chunk]
        order = np.argsort(sel, kind="stable")
        s = sel[order]
        lo, hi = int(s[0]), int(s[-1]) + 1
        block = np.asarray(arr[lo:hi])[s - lo]  # one contiguous read per chunk
        out = np.empty_like(block)
        out[order] = block
        yield sel, out


def read_embeddings(store, run: str, rows: np.ndarray | None = None, dtype=np.float16) -> np.ndarray:
    """All selected embeddings at once (``[k, D]``, float16 as stored unless ``dtype``);
    prefer :func:`iter_embeddings` for many cells."""
    parts = [np.asarray(e, dtype=dtype) for _, e in iter_embeddings(store, run, rows)]
    if not parts:
        return np.zeros((0, embedding_dim(store, run)), dtype=dtype)
    return np.concatenate(parts)


# ---------------------------------------------------------------------------- writers (the stage)


def prepare_run(store, run: str, n_cells: int, dim: int, attrs: dict, block: int = BLOCK, overwrite: bool = False):
    """Create (or reopen) the run's arrays; returns the group key.

    An existing run made for another cells table, or with other models, views, image
    sizes, folds or duplicate handling (every option that decides the output), is an error
    unless ``overwrite`` (which deletes it first). Checked and written under one lock, so
    two shards started at once with different options cannot both pass.
    """
    with store.lock(PREPARE_LOCK):
        return _prepare_run(store, run, n_cells, dim, attrs, block, overwrite)


PREPARE_LOCK = ".hpa-pseudolabel-prepare.lock"
DECIDING = ("cells_table_id", "models", "views", "img_size", "folds", "skip_duplicates")


def _prepare_run(store, run, n_cells, dim, attrs, block, overwrite):
    res = results(store, run, block)
    attrs = {STAMP: current_table_id(store), **attrs}
    if overwrite:
        res.delete()
    elif res.exists():
        old = store.attrs(res.key)
        for name in res.differs(attrs, DECIDING, optional=("folds", "skip_duplicates")):  # older hpacli: not written
            raise StoreError(
                f"pseudo-labels {run!r} exist with other {name.replace('_', ' ')} "
                f"({_short(old.get(name))} vs {_short(attrs.get(name))}); use the same options, another --run "
                "name, or --overwrite"
            )
    res.ensure(n_cells, {"embedding_dim": int(dim), **attrs}, widths={"embeddings": int(dim)})
    return res.key


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:79] + "…"


def write_block(store, run: str, start: int, probs: np.ndarray, embeddings: np.ndarray, model: np.ndarray) -> None:
    """Write rows ``start : start + len(probs)`` (a whole block: whole chunks)."""
    results(store, run).write_rows(start, probs=probs, embeddings=embeddings, model=model)


# ---------------------------------------------------------------------------- hpa info


def coverage_rows(store) -> list[dict]:
    """Cells labelled / cells total per run and image fold (for ``hpa info``)."""
    from .cells import CellTable
    from .cells import exists as cells_exist
    from .folds import read_image_folds

    runs = list_runs(store)
    if not runs or not cells_exist(store):
        return []
    cells = CellTable(store)
    try:
        folds = read_image_folds(store)
    except StoreError:
        folds = np.full(cells.n_images, -1, dtype=np.int8)
    image = cells.column("image")
    cell_fold = folds[image] if len(image) else np.zeros(0, dtype=np.int8)
    out = []
    for run in runs:
        try:
            info = run_info(store, run)
            model = read_model(store, run)
        except StoreError:
            continue
        if len(model) != len(cell_fold):
            out.append({"run": run, "fold": "-", "labelled": "-", "cells": "-", "coverage": "stale (cells changed)"})
            continue
        for f in sorted(set(cell_fold.tolist())):
            sel = cell_fold == f
            total = int(sel.sum())
            done = int((model[sel] >= 0).sum())
            out.append({
                "run": run + (" (stale)" if info["stale"] else ""),
                "fold": "unused" if f < 0 else str(f),
                "labelled": done,
                "cells": total,
                "coverage": f"{100.0 * done / total:.1f}%" if total else "-",
            })
    return out


def summary_section(store):
    rows = coverage_rows(store)
    return ("pseudo-labels: cells labelled per fold", rows) if rows else None
