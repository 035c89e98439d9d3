"""Folds: image folds for the image- and cell-level models, cell folds for de-noising.

Layout: ``folds/images/<name>/fold`` int8 ``[N]`` (fold 0..k-1 of each image; -1 = not
used: test images, dropped duplicates, excluded negatives), parameters in the group's
provenance. ``folds/cells/<name>/fold`` int8 ``[C]`` aligned with the cells table.
"""

from __future__ import annotations

import numpy as np

from ..errors import StoreError

DEFAULT = "default"


def image_folds_key(name: str = DEFAULT) -> str:
    return f"folds/images/{name}"


def cell_folds_key(name: str = DEFAULT) -> str:
    return f"folds/cells/{name}"


def _write_folds(store, key: str, fold: np.ndarray) -> None:
    fold = np.asarray(fold, dtype=np.int8)
    arr = store.create_array(f"{key}/fold", fold.shape, "int8", (65536,), encoding="fold-index", fill_value=-1,
                             overwrite=True)
    arr[:] = fold


def write_image_folds(store, fold: np.ndarray, name: str = DEFAULT) -> None:
    _write_folds(store, image_folds_key(name), fold)


def read_image_folds(store, name: str = DEFAULT) -> np.ndarray:
    key = f"{image_folds_key(name)}/fold"
    if not store.has(key):
        raise StoreError(f"the store {store.path} has no image folds {name!r}; run `hpa fold` first")
    fold = np.asarray(store.array(key)[:]).astype(np.int8)
    n = store.images.n
    if len(fold) < n:  # images ingested after folding are not in any fold
        fold = np.concatenate([fold, np.full(n - len(fold), -1, dtype=np.int8)])
    return fold


def write_cell_folds(store, fold: np.ndarray, name: str = DEFAULT) -> None:
    _write_folds(store, cell_folds_key(name), fold)


def read_cell_folds(store, name: str = DEFAULT) -> np.ndarray:
    key = f"{cell_folds_key(name)}/fold"
    if not store.has(key):
        raise StoreError(f"the store {store.path} has no cell folds {name!r}; run `hpa fold --cells` first")
    return np.asarray(store.array(key)[:]).astype(np.int8)


def fold_params(store, key: str) -> dict:
    """The parameters a fold set was made with (its ``fold`` stage record); {} when none."""
    return dict((store.attrs(key).get("provenance") or {}).get("params") or {})


def list_fold_sets(store, kind: str = "images") -> list[str]:
    """Names of the stored fold sets of ``kind`` (images | cells)."""
    folder = store.path / "folds" / kind
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if (p / "fold" / "zarr.json").exists())


def check_cell_folds_current(store, name: str = DEFAULT) -> None:
    """StoreError when the cell folds were made for an older cells table."""
    from .cells import CellTable

    made_for = store.attrs(cell_folds_key(name)).get("table_id")
    if made_for is not None and made_for != CellTable(store).table_id:
        raise StoreError(f"cell folds {name!r} belong to an older cells table; run `hpa fold --cells` again")
