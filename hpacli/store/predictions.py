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
from .core import child_key

GROUP = "predictions"
BLOCK = 1024
ENCODING = "hpacli-predictions"
PREPARE_LOCK = ".hpa-predict-prepare.lock"


def name_key(name: str) -> str:
    return child_key(GROUP, name, "predictions")


# ---------------------------------------------------------------------------- readers


def list_names(store) -> list[str]:
    folder = store.path / GROUP
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and (p / "probs" / "zarr.json").exists())


def _require(store, name: str) -> str:
    key = name_key(name)
    if not store.has(f"{key}/probs"):
        have = list_names(store)
        hint = f"; predictions in the store: {', '.join(have)}" if have else ""
        raise StoreError(f"the store {store.path} has no predictions {name!r}; run `hpa predict --name {name}`{hint}")
    return key


def _current_table_id(store) -> str | None:
    from .cells import GROUP as CELLS

    return store.attrs(CELLS).get("table_id") if store.has(CELLS) else None


def info(store, name: str) -> dict:
    """Attributes plus ``n_cells``, ``blocks``, ``blocks_done``, ``complete``, ``stale``."""
    from .work import BlockWork

    key = _require(store, name)
    out = dict(store.attrs(key))
    n = int(store.array(f"{key}/probs").shape[0])
    work = BlockWork(store, key, n, int(out.get("block", BLOCK)))
    out.update(n_cells=n, blocks=work.n_blocks, blocks_done=work.n_done, complete=work.all_done(),
               stale=_current_table_id(store) != out.get("cells_table_id"))
    return out


def check_current(store, name: str) -> None:
    if info(store, name)["stale"]:
        raise StoreError(
            f"predictions {name!r} belong to an older cells table (images were added or segmented again); "
            f"run `hpa predict --name {name}` again"
        )


def done_rows(store, name: str) -> np.ndarray:
    """bool ``[C]``: rows whose block is done."""
    from .work import BlockWork

    key = _require(store, name)
    n = int(store.array(f"{key}/probs").shape[0])
    block = int(store.attrs(key).get("block", BLOCK))
    done = BlockWork(store, key, n, block).done_mask()
    return np.repeat(done, block)[:n] if n else np.zeros(0, dtype=bool)


def read_probs(store, name: str = "default") -> np.ndarray:
    """float32 ``[C, 19]``; rows not predicted (or in blocks not done) are NaN."""
    key = _require(store, name)
    store.require_rows(f"{key}/probs")
    probs = np.asarray(store.array(f"{key}/probs")[:], dtype=np.float32)
    probs[~done_rows(store, name)] = np.nan
    return probs


def predicted_mask(store, name: str = "default") -> np.ndarray:
    """bool ``[C]``: cells with stored predictions."""
    return np.isfinite(read_probs(store, name)).all(axis=1)


# ---------------------------------------------------------------------------- writers (the stage)


def prepare_lock(store):
    return store.lock(PREPARE_LOCK)


def _old_rows(store, key: str, block: int) -> dict | None:
    """Done rows of an existing set: {(image, cell_id, r0, c0, r1, c1): probs}."""
    if not store.has(f"{key}/image"):
        return None
    from .work import BlockWork

    for name in ("probs", "image", "cell_id", "bbox"):
        store.require_rows(f"{key}/{name}")
    probs = np.asarray(store.array(f"{key}/probs")[:], dtype=np.float32)
    image = np.asarray(store.array(f"{key}/image")[:])
    cell = np.asarray(store.array(f"{key}/cell_id")[:])
    bbox = np.asarray(store.array(f"{key}/bbox")[:])
    n = len(probs)
    done = np.repeat(BlockWork(store, key, n, block).done_mask(), block)[:n] if n else np.zeros(0, bool)
    keep = done & np.isfinite(probs).all(axis=1)
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
    from .cells import CellTable

    key = name_key(name)
    table_id = CellTable(store).table_id
    carried: dict = {}
    with prepare_lock(store):
        if overwrite:
            store.delete(key)
        elif store.has(f"{key}/probs"):
            old = store.attrs(key)
            if old.get("settings") != settings:
                diff = sorted(k for k in set(old.get("settings") or {}) | set(settings)
                              if (old.get("settings") or {}).get(k) != settings.get(k))
                raise StoreError(
                    f"predictions {name!r} exist with other settings ({', '.join(diff)}); "
                    "use another --name or --overwrite"
                )
            if old.get("cells_table_id") != table_id:
                carried = _old_rows(store, key, int(old.get("block", BLOCK))) or {}
                store.delete(key)
        store.group(GROUP, create=True)
        store.group(key, create=True)
        n = max(int(n_cells), 0)
        from .work import BlockWork, per_file_for, shards_of

        # the markers first: they fix how many blocks share a file, and the arrays' files follow them
        rows = BlockWork(store, key, n, block, per_file_for(store, key, "cells", block)).rows_per_file
        store.ensure_array(f"{key}/probs", (n, N_CLASSES), "float32", (block, N_CLASSES),
                           encoding="cell-probabilities", fill_value=float("nan"),
                           coverage="done", shards=shards_of((block, N_CLASSES), rows))
        store.ensure_array(f"{key}/image", (n,), "int32", (block,), encoding="image-index", fill_value=-1,
                           coverage="done", shards=shards_of((block,), rows))
        store.ensure_array(f"{key}/cell_id", (n,), "int32", (block,), encoding="cell-id", fill_value=0,
                           coverage="done", shards=shards_of((block,), rows))
        store.ensure_array(f"{key}/bbox", (n, 4), "int32", (block, 4), encoding="bbox-r0c0r1c1", fill_value=0,
                           coverage="done", shards=shards_of((block, 4), rows))
        attrs = store.attrs(key)
        if attrs.get("cells_table_id") != table_id or attrs.get("settings") != settings:
            store.update_attrs(key, {"encoding": ENCODING, "encoding_version": 1, "block": int(block),
                                     "cells_table_id": table_id, "settings": settings})
    return key, carried


def write_block(store, name: str, start: int, probs: np.ndarray, image: np.ndarray, cell_id: np.ndarray,
                bbox: np.ndarray) -> None:
    """Write rows ``start : start + len(probs)`` (a whole block: whole chunks)."""
    key = name_key(name)
    stop = start + len(probs)
    store.array(f"{key}/probs")[start:stop] = np.asarray(probs, dtype=np.float32)
    store.array(f"{key}/image")[start:stop] = np.asarray(image, dtype=np.int32)
    store.array(f"{key}/cell_id")[start:stop] = np.asarray(cell_id, dtype=np.int32)
    store.array(f"{key}/bbox")[start:stop] = np.asarray(bbox, dtype=np.int32)


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
