"""De-noised labels (``hpa denoise``) and reviewed selections (``hpa select-mitotic``).

Layout (group ``denoise/<run>``, ``<run>`` = the pseudo-label run; rows aligned with the
cells table)::

    denoise/<run>/y_init   float32 [C, 20]  19 probabilities + "nothing there"; NaN = not de-noised
    denoise/<run>/y_opt    float32 [C, 20]  de-noised labels; NaN = not de-noised
    denoise/<run>/fold     int8    [C]      de-noising fold the cell was solved in; -1 = none
    denoise/<run>/knn      int32   [C, k]   the cell's k nearest cells (cell rows); -1 = none
    denoise/<run>/_done    bool    [folds]  BlockWork markers, one block per fold
    denoise/<run>/selections/<name>/cells  int64 [n]  selected cell rows, best first
    denoise/<run>/selections/<name>/scores float32 [n, 3]  y_init, y_opt, y_opt / fold max

Group attributes: ``encoding`` ``hpacli-denoise`` v1, ``cells_table_id``, ``denoiser``,
``params``, ``cell_folds``, ``folds`` (``{fold: diagnostics}``) and the provenance
record. A selection's attributes hold its rule and parameters, the counts of every rule,
and ``accepted`` (True once imported from a reviewed CSV).
"""

from __future__ import annotations

import numpy as np

from ..errors import StoreError
from .core import child_key

GROUP = "denoise"
ENCODING = "hpacli-denoise"
N_COLS = 20
ROW_CHUNK = 16384


def run_key(run: str) -> str:
    return child_key(GROUP, run)


def prepare(store, run: str, n_cells: int, k: int, attrs: dict, overwrite: bool = False) -> str:
    key = run_key(run)
    if overwrite:
        store.delete(key)
    elif store.has(f"{key}/y_opt"):
        old = store.attrs(key)
        for name in ("cells_table_id", "denoiser", "params", "cell_folds", "cell_folds_id"):
            if name == "cell_folds_id" and name not in old:  # written by an older hpacli
                continue
            if old.get(name) != attrs.get(name):
                raise StoreError(
                    f"de-noised labels for {run!r} exist with other {name.replace('_', ' ')}; "
                    "pass --overwrite to start over"
                )
        if int(store.array(f"{key}/knn").shape[1]) != int(k):
            raise StoreError(f"de-noised labels for {run!r} exist with another k; pass --overwrite")
    store.group(GROUP, create=True)
    store.group(key, create=True)
    n = max(int(n_cells), 0)
    store.ensure_array(f"{key}/y_init", (n, N_COLS), "float32", (ROW_CHUNK, N_COLS), encoding="cell-label-matrix",
                       fill_value=float("nan"))
    store.ensure_array(f"{key}/y_opt", (n, N_COLS), "float32", (ROW_CHUNK, N_COLS), encoding="cell-label-matrix",
                       fill_value=float("nan"))
    store.ensure_array(f"{key}/fold", (n,), "int8", (ROW_CHUNK,), encoding="fold-index", fill_value=-1)
    store.ensure_array(f"{key}/knn", (n, int(k)), "int32", (ROW_CHUNK, int(k)), encoding="cell-neighbours",
                       fill_value=-1)
    store.update_attrs(key, {"encoding": ENCODING, "encoding_version": 1, **attrs})
    return key


def write_fold(store, run: str, rows: np.ndarray, fold: int, y_init: np.ndarray, y_opt: np.ndarray,
               knn_rows: np.ndarray) -> None:
    """Write one fold's rows (scattered over the table: orthogonal selection)."""
    key = run_key(run)
    rows = np.asarray(rows, dtype=np.int64)
    store.array(f"{key}/y_init").set_orthogonal_selection((rows, slice(None)), y_init.astype(np.float32))
    store.array(f"{key}/y_opt").set_orthogonal_selection((rows, slice(None)), y_opt.astype(np.float32))
    store.array(f"{key}/fold").set_orthogonal_selection(rows, np.full(len(rows), fold, dtype=np.int8))
    store.array(f"{key}/knn").set_orthogonal_selection((rows, slice(None)), knn_rows.astype(np.int32))


def _require(store, run: str) -> str:
    key = run_key(run)
    if not store.has(f"{key}/y_opt"):
        raise StoreError(f"the store {store.path} has no de-noised labels for {run!r}; run `hpa denoise --run {run}`")
    return key


def read(store, run: str) -> dict[str, np.ndarray]:
    """``y_init``, ``y_opt`` (float32 [C, 20]), ``fold`` (int8 [C]) of every cell."""
    key = _require(store, run)
    return {name: np.asarray(store.array(f"{key}/{name}")[:]) for name in ("y_init", "y_opt", "fold")}


def read_knn(store, run: str) -> np.ndarray:
    return np.asarray(store.array(f"{_require(store, run)}/knn")[:])


def info(store, run: str) -> dict:
    return dict(store.attrs(_require(store, run)))


def check_current(store, run: str) -> dict:
    """The run's attributes; StoreError when it was made for another cells table, or with
    cell folds that were made again since (its Y_opt and folds would not match them)."""
    from .cells import CellTable
    from .folds import check_cell_folds_current

    attrs = info(store, run)
    redo = f"run `hpa denoise --run {run} --overwrite`"
    made_for = attrs.get("cells_table_id")
    if made_for is not None and made_for != CellTable(store).table_id:
        raise StoreError(f"de-noised labels of {run!r} belong to an older cells table (segmentation was redone); {redo}")
    if attrs.get("cell_folds_id") is not None:
        try:
            check_cell_folds_current(store, attrs.get("cell_folds") or "default", attrs["cell_folds_id"])
        except StoreError as exc:
            raise StoreError(f"de-noised labels of {run!r} do not match the stored cell folds ({exc}); {redo}") from None
    return attrs


def selection_key(run: str, name: str) -> str:
    return child_key(f"{run_key(run)}/selections", name, "selection")


def write_selection(store, run: str, name: str, cells: np.ndarray, scores: np.ndarray, attrs: dict) -> None:
    _require(store, run)
    key = selection_key(run, name)
    store.delete(key)
    store.group(f"{run_key(run)}/selections", create=True)
    store.group(key, create=True)
    n = len(cells)
    store.create_array(f"{key}/cells", (n,), "int64", (max(n, 1),), encoding="cell-rows", overwrite=True, coverage="all")[:] = \
        np.asarray(cells, dtype=np.int64)
    store.create_array(f"{key}/scores", (n, 3), "float32", (max(n, 1), 3), encoding="selection-scores",
                       overwrite=True, coverage="all")[:] = np.asarray(scores, dtype=np.float32).reshape(n, 3)
    store.update_attrs(key, {"encoding": "hpacli-selection", "encoding_version": 1, **attrs})


def read_selection(store, run: str, name: str = "mitotic") -> tuple[np.ndarray, dict]:
    key = selection_key(run, name)
    if not store.has(f"{key}/cells"):
        raise StoreError(f"no selection {name!r} for {run!r}; run `hpa select-mitotic --run {run}`")
    return np.asarray(store.array(f"{key}/cells")[:]), dict(store.attrs(key))


def summary_section(store):
    """``hpa info``: per run and fold, cells de-noised, iterations, kNN recall; selections."""
    folder = store.path / GROUP
    if not folder.is_dir():
        return None
    rows = []
    for run_dir in sorted(p for p in folder.iterdir() if (p / "y_opt" / "zarr.json").exists()):
        attrs = store.attrs(f"{GROUP}/{run_dir.name}")
        for f, d in sorted((attrs.get("folds") or {}).items()):
            rows.append({"run": run_dir.name, "fold": f, "cells": d.get("cells", "-"),
                         "iterations": d.get("n_iter", "-"), "kNN": d.get("knn", "-"),
                         "recall@k": d.get("recall_at_k", "-"), "seconds": d.get("seconds_total", "-")})
        sel_dir = run_dir / "selections"
        if sel_dir.is_dir():
            for s in sorted(p.name for p in sel_dir.iterdir() if (p / "cells" / "zarr.json").exists()):
                sa = store.attrs(f"{GROUP}/{run_dir.name}/selections/{s}")
                n = int(store.array(f"{GROUP}/{run_dir.name}/selections/{s}/cells").shape[0])
                rows.append({"run": run_dir.name, "fold": f"selection {s}", "cells": n,
                             "iterations": "accepted" if sa.get("accepted") else "to review", "kNN": "-",
                             "recall@k": "-", "seconds": "-"})
    return ("de-noised labels", rows) if rows else None
