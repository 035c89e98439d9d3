"""Per-cell predictions (``hpa predict``), one set per name.

Layout (group ``predictions/<name>``; rows aligned with the cells table)::

    predictions/<name>/probs    float32 [C, 19]  final probabilities (ensemble, TTA, blend,
                                                 negative rule applied); NaN = not predicted
    predictions/<name>/image    int32   [C]      image index of the row when it was written
    predictions/<name>/cell_id  int32   [C]      cell id of the row when it was written
    predictions/<name>/bbox     int32   [C, 4]   cell bbox of the row when it was written
    predictions/<name>/_done    bool    [blocks] BlockWork done markers

``image``/``cell_id``/``bbox`` let a later run keep the rows of cells that are still in a
rewritten cells table (new images segmented) instead of predicting them again.

Group attributes: ``encoding`` ``hpacli-predictions`` v1, ``cells_table_id``, ``block``,
``settings`` (models, views, negative, blend, image model, split, ...) and the stage's
``provenance`` record.
"""

from __future__ import annotations

import numpy as np

from ..classes import N_CLASSES
from ..errors import StoreError
from .cellresults import CellResults, Column, Kind

GROUP = "predictions"
BLOCK = 1024
ENCODING = "hpacli-predictions"
PREPARE_LOCK = ".hpa-predict-prepare.lock"
COLUMNS = (
    Column("probs", "float32", "cell-probabilities", (N_CLASSES,), float("nan")),
    Column("image", "int32", "image-index", (), -1),
    Column("cell_id", "int32", "cell-id", (), 0),
    Column("bbox", "int32", "bbox-r0c0r1c1", (4,), 0),
)


KIND = Kind(GROUP, COLUMNS, ENCODING, BLOCK, "predictions", "predictions", "hpa predict --name {name}",
            name_what="predictions")
name_key = KIND.key
results = KIND.results
list_names = KIND.names
_require = KIND.require
info = KIND.status  # attributes plus n_cells, blocks, blocks_done, complete, stale


# ---------------------------------------------------------------------------- readers
def check_current(store, name: str) -> None:
    _require(store, name).require_current(
        f"predictions {name!r} belong to an older cells table (images were added or segmented again); "
        f"run `hpa predict --name {name}` again")


def done_rows(store, name: str) -> np.ndarray:
    """bool ``[C]``: rows whose block is done."""
    return _require(store, name).done_rows()


def read_probs(store, name: str = "default") -> np.ndarray:
    """float32 ``[C, 19]``; rows not predicted (or in blocks not done) are NaN."""
    return _require(store, name).read_done("probs", np.nan)


def predicted_mask(store, name: str = "default") -> np.ndarray:
    """bool ``[C]``: cells with stored predictions."""
    return np.isfinite(read_probs(store, name)).all(axis=1)


# ---------------------------------------------------------------------------- writers (the stage)


def prepare_lock(store):
    return store.lock(PREPARE_LOCK)


def _old_rows(res: CellResults) -> dict | None:
    """Done rows of an existing set: {(image, cell_id, r0, c0, r1, c1): probs}."""
    if not res.has_column("image"):
        return None
    probs = res.read("probs").astype(np.float32)
    image, cell, bbox = res.read("image"), res.read("cell_id"), res.read("bbox")
    keep = res.done_rows() & np.isfinite(probs).all(axis=1)
    return {(int(image[r]), int(cell[r]), *map(int, bbox[r])): probs[r] for r in np.flatnonzero(keep)}


def prepare(store, name: str, n_cells: int, settings: dict, block: int = BLOCK,
            overwrite: bool = False) -> tuple[str, dict]:
    """Create or reopen ``predictions/<name>``; returns ``(key, carried)``.

    Other ``settings`` than the stored ones are an error unless ``overwrite``. When the
    cells table was rewritten since, the set is rebuilt for the new table and
    ``carried`` maps ``(image, cell_id, r0, c0, r1, c1)`` to the probabilities of cells
    that were already predicted (the stage writes them instead of predicting again).
    Safe for several shard processes at once.
    """
    res = results(store, name, block)
    carried: dict = {}
    with prepare_lock(store):
        if overwrite:
            res.delete()
        elif res.exists():
            old = store.attrs(res.key)
            if old.get("settings") != settings:
                diff = sorted(k for k in set(old.get("settings") or {}) | set(settings)
                              if (old.get("settings") or {}).get(k) != settings.get(k))
                raise StoreError(
                    f"predictions {name!r} exist with other settings ({', '.join(diff)}); "
                    "use another --name or --overwrite"
                )
            if res.stale(old):
                carried = _old_rows(results(store, name, int(old.get("block", BLOCK))))
                carried = carried or {}
                res.delete()
        fresh = not res.exists() or res.stale() or store.attrs(res.key).get("settings") != settings
        res.ensure(n_cells, {"settings": settings}) if fresh else res.ensure_columns(n_cells)
    return res.key, carried


def write_block(store, name: str, start: int, probs: np.ndarray, image: np.ndarray, cell_id: np.ndarray,
                bbox: np.ndarray) -> None:
    """Write rows ``start : start + len(probs)`` (a whole block: whole chunks)."""
    results(store, name).write_rows(start, probs=probs, image=image, cell_id=cell_id, bbox=bbox)


# ---------------------------------------------------------------------------- hpa info


def summary_section(store):
    rows = []
    for name in list_names(store):
        try:
            i = info(store, name)
            n_pred = int(predicted_mask(store, name).sum())
        except StoreError:
            continue
        s = i.get("settings") or {}
        rows.append({"name": name + (" (stale)" if i["stale"] else ""), "cells predicted": n_pred,
                     "cells": i["n_cells"], "models": len(s.get("models") or []),
                     "views": ",".join(s.get("views") or []), "negative": s.get("negative"),
                     "status": "complete" if i["complete"] else f"{i['blocks_done']}/{i['blocks']} blocks"})
    return ("predictions", rows) if rows else None
