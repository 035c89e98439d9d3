"""Folds: image folds for the image- and cell-level models, cell folds for de-noising.

Layout: ``folds/images/<name>/fold`` int8 ``[N]`` (fold 0..k-1 of each image; -1 = not
used: test images, dropped duplicates, excluded negatives), parameters in the group's
provenance. ``folds/cells/<name>/fold`` int8 ``[C]`` aligned with the cells table.
"""

from __future__ import annotations

import numpy as np

from ..errors import StoreError
from .cellresults import STAMP, CellResults, Column, stamp_of
from .core import child_key

DEFAULT = "default"
CELL_FOLDS_ENCODING = "hpacli-cell-folds"
FOLD_CHUNK = 65536


def image_folds_key(name: str = DEFAULT) -> str:
    return child_key("folds/images", name, "fold set")


def cell_folds_key(name: str = DEFAULT) -> str:
    return child_key("folds/cells", name, "fold set")


def _write_folds(store, key: str, fold: np.ndarray) -> None:
    fold = np.asarray(fold, dtype=np.int8)
    arr = store.create_array(f"{key}/fold", fold.shape, "int8", (65536,), encoding="fold-index", fill_value=-1,
                             overwrite=True, coverage="all")
    arr[:] = fold


def write_image_folds(store, fold: np.ndarray, name: str = DEFAULT) -> None:
    _write_folds(store, image_folds_key(name), fold)


def read_image_folds(store, name: str = DEFAULT) -> np.ndarray:
    key = f"{image_folds_key(name)}/fold"
    if not store.has(key):
        raise StoreError(f"the store {store.path} has no image folds {name!r}; run `hpa fold` first")
    status = (store.attrs(image_folds_key(name)).get("provenance") or {}).get("status")
    if status not in (None, "done"):
        raise StoreError(f"image folds {name!r} were not finished (status {status}); run `hpa fold` again")
    store.require_rows(key)
    fold = np.asarray(store.array(key)[:]).astype(np.int8)
    n = store.images.n
    if len(fold) < n:  # images ingested after folding are not in any fold
        fold = np.concatenate([fold, np.full(n - len(fold), -1, dtype=np.int8)])
    return fold


def folds_id(fold: np.ndarray) -> str:
    """A short digest of a fold assignment: equal folds, equal id (a re-fold with the same
    seed keeps it; another seed or another table changes it)."""
    import hashlib

    return hashlib.sha1(np.ascontiguousarray(fold, dtype=np.int8).tobytes()).hexdigest()[:16]


def cell_fold_results(store, name: str = DEFAULT) -> CellResults:
    """The cell folds ``name`` as a per-cell result set (:mod:`.cellresults`)."""
    return CellResults(store, cell_folds_key(name), (Column("fold", "int8", "fold-index", (), -1, "all"),),
                       CELL_FOLDS_ENCODING, FOLD_CHUNK)


def write_cell_folds(store, fold: np.ndarray, name: str = DEFAULT, table_id: str | None = None) -> str:
    """Write cell folds for the current cells table (or ``table_id``); returns their id."""
    from .cellresults import current_table_id

    res = cell_fold_results(store, name)
    fold = np.asarray(fold, dtype=np.int8)
    fid = folds_id(fold)
    store.delete(f"{res.key}/fold")
    res.ensure(len(fold), {STAMP: table_id or current_table_id(store), "folds_id": fid}, block=False)
    res.write_rows(0, fold=fold)
    return fid


def read_cell_folds(store, name: str = DEFAULT, check: bool = True) -> np.ndarray:
    """int8 ``[C]`` cell folds; with ``check``, refused when they were made for another
    cells table (:func:`check_cell_folds_current`)."""
    res = cell_fold_results(store, name)
    if not res.exists():
        raise StoreError(f"the store {store.path} has no cell folds {name!r}; run `hpa fold --cells` first")
    if check:
        check_cell_folds_current(store, name)
    return res.read("fold").astype(np.int8)


def cell_folds_id(store, name: str = DEFAULT) -> str | None:
    return store.attrs(cell_folds_key(name)).get("folds_id")


def fold_params(store, key: str) -> dict:
    """The parameters a fold set was made with (its ``fold`` stage record); {} when none."""
    return dict((store.attrs(key).get("provenance") or {}).get("params") or {})


def list_fold_sets(store, kind: str = "images") -> list[str]:
    """Names of the stored fold sets of ``kind`` (images | cells)."""
    folder = store.path / "folds" / kind
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if (p / "fold" / "zarr.json").exists())


def check_cell_folds_current(store, name: str = DEFAULT, folds_id: str | None = None) -> None:
    """StoreError when the cell folds ``name`` were made for another cells table (the same
    number of cells is not enough: a re-segmentation changes which cells they are), were
    not finished, or (with ``folds_id``) are not the folds a result was computed with."""
    from .cells import CellTable

    key = cell_folds_key(name)
    again = f"run `hpa fold --cells{'' if name == DEFAULT else f' --name {name}'}` again"
    if not store.has(f"{key}/fold"):
        raise StoreError(f"the store {store.path} has no cell folds {name!r}; run `hpa fold --cells` first")
    attrs = cell_fold_results(store, name).attrs()
    record = attrs.get("provenance") or {}
    made_for = stamp_of(attrs) or (record.get("params") or {}).get("table_id")
    if made_for is None:
        raise StoreError(f"cell folds {name!r} do not say which cells table they were made for; {again}")
    if made_for != CellTable(store).table_id:
        raise StoreError(f"cell folds {name!r} belong to an older cells table (segmentation was redone); {again}")
    if record and record.get("status") not in (None, "done"):
        raise StoreError(f"cell folds {name!r} were not finished (status {record.get('status')}); {again}")
    if folds_id is not None and attrs.get("folds_id") != folds_id:
        raise StoreError(f"cell folds {name!r} were made again since; the results made with the old folds are stale")
