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
    denoise/<run>/selections/<name>/proposed_by uint8 [n]  bit flags of the rules that
                                                picked the cell (attribute ``flags``)
    denoise/<run>/selections/<name>/review/state int8    [n]  0 unreviewed, 1 accepted,
                                                              2 rejected, 3 skipped
    denoise/<run>/selections/<name>/review/time  float64 [n]  when (Unix seconds); NaN = never
    denoise/<run>/selections/<name>/review/who   str     [n]  who decided ("" = nobody)

Group attributes: ``encoding`` ``hpacli-denoise`` v1, ``cells_table_id``, ``denoiser``,
``params``, ``cell_folds``, ``folds`` (``{fold: diagnostics}``) and the provenance
record. A selection's attributes hold its rule and parameters, the counts of every rule,
and ``accepted`` (True once imported with ``hpa select-mitotic --accept``). The ``review``
group (``hpacli-review`` v1, written by ``hpa review``) holds one decision per selected
cell; each decision is written under the store lock, one element at a time, so several
review pages on one store never lose each other's decisions. Re-selecting keeps the
decisions of the cells that stay selected (same class).

Which cells a selection makes positive (:func:`selection_positives`): an accepted
selection gives all its cells except those a review rejected or skipped; a selection not
accepted gives the cells a review accepted; one with neither gives none (not reviewed).
"""

from __future__ import annotations

import math
import time

import numpy as np

from ..errors import StoreError
from .cellresults import CellResults, Column, stamp_of
from .core import child_key

GROUP = "denoise"
ENCODING = "hpacli-denoise"
N_COLS = 20
ROW_CHUNK = 16384
REVIEW_ENCODING = "hpacli-review"
REVIEW_STATES = ("unreviewed", "accepted", "rejected", "skipped")
UNREVIEWED, ACCEPTED, REJECTED, SKIPPED = range(4)
REVIEW_CHUNK = 1024
COLUMNS = (
    Column("y_init", "float32", "cell-label-matrix", (N_COLS,), float("nan"), None),
    Column("y_opt", "float32", "cell-label-matrix", (N_COLS,), float("nan"), None),
    Column("fold", "int8", "fold-index", (), -1, None),
    Column("knn", "int32", "cell-neighbours", (0,), -1, None),  # width: the denoiser's neighbour lists
)
DECIDING = ("cells_table_id", "denoiser", "params", "cell_folds", "cell_folds_id")


def run_key(run: str) -> str:
    return child_key(GROUP, run)


def results(store, run: str) -> CellResults:
    """The run's per-cell result set (:mod:`.cellresults`); its BlockWork blocks are the
    de-noising folds (one block per fold)."""
    return CellResults(store, run_key(run), COLUMNS, ENCODING, 1)


def run_lock(store, run: str, busy: str):
    """One ``hpa denoise`` per run at a time (folds share chunks): a second gets ``busy``."""
    return store.lock(f".hpa-denoise-{run}.lock", busy=busy)


def prepare(store, run: str, n_cells: int, k: int, attrs: dict, overwrite: bool = False) -> str:
    """Create (or reopen) the run's arrays with neighbour lists of width ``k``; an existing
    run made with other deciding attributes is refused unless ``overwrite``."""
    res = results(store, run)
    if overwrite:
        res.delete()
    elif res.has_column("y_opt"):
        for name in res.differs(attrs, DECIDING, optional=("cell_folds_id",)):  # older hpacli: not written
            raise StoreError(
                f"de-noised labels for {run!r} exist with other {name.replace('_', ' ')}; "
                "pass --overwrite to start over"
            )
        if int(res.column("knn").shape[1]) != int(k):
            raise StoreError(f"de-noised labels for {run!r} exist with another k; pass --overwrite")
    store.group(GROUP, create=True)
    res.ensure(n_cells, attrs, widths={"knn": int(k)}, chunk=ROW_CHUNK, block=False)
    return res.key


def write_fold(store, run: str, rows: np.ndarray, fold: int, y_init: np.ndarray, y_opt: np.ndarray,
               knn_rows: np.ndarray) -> None:
    """Write one fold's rows (scattered over the table: orthogonal selection)."""
    rows = np.asarray(rows, dtype=np.int64)
    results(store, run).write_scattered(rows, y_init=y_init, y_opt=y_opt, fold=np.full(len(rows), fold, np.int8),
                                        knn=knn_rows)


def fold_diagnostics(store, run: str) -> dict:
    """``{fold: diagnostics}`` of the folds de-noised so far."""
    return dict(store.attrs(run_key(run)).get("folds") or {})


def write_fold_diagnostics(store, run: str, fold: int, diagnostics: dict) -> None:
    """Record one fold's diagnostics (the stage writes them before marking the fold done)."""
    diag = fold_diagnostics(store, run)
    diag[str(fold)] = diagnostics
    store.update_attrs(run_key(run), {"folds": diag})


def _require(store, run: str) -> CellResults:
    res = results(store, run)
    if not res.has_column("y_opt"):
        raise StoreError(f"the store {store.path} has no de-noised labels for {run!r}; run `hpa denoise --run {run}`")
    return res


def read(store, run: str) -> dict[str, np.ndarray]:
    """``y_init``, ``y_opt`` (float32 [C, 20]), ``fold`` (int8 [C]) of every cell."""
    res = _require(store, run)
    return {name: res.read(name) for name in ("y_init", "y_opt", "fold")}


def read_knn(store, run: str, rows: np.ndarray | None = None) -> np.ndarray:
    """The stored neighbour lists (cell rows, -1 = none): all, or those of ``rows`` only."""
    arr = _require(store, run).column("knn")
    if rows is None:
        return np.asarray(arr[:])
    rows = np.asarray(rows, dtype=np.int64)
    if not len(rows):
        return np.zeros((0, arr.shape[1]), dtype=np.int32)
    return np.asarray(arr.get_orthogonal_selection((rows, slice(None))))


def info(store, run: str) -> dict:
    return _require(store, run).attrs()


def check_current(store, run: str) -> dict:
    """The run's attributes; StoreError when it was made for another cells table, or with
    cell folds that were made again since (its Y_opt and folds would not match them)."""
    from .folds import check_cell_folds_current

    res = _require(store, run)
    attrs = res.attrs()
    redo = f"run `hpa denoise --run {run} --overwrite`"
    if stamp_of(attrs) is not None and res.stale(attrs):
        raise StoreError(f"de-noised labels of {run!r} belong to an older cells table (segmentation was redone); {redo}")
    if attrs.get("cell_folds_id") is not None:
        try:
            check_cell_folds_current(store, attrs.get("cell_folds") or "default", attrs["cell_folds_id"])
        except StoreError as exc:
            raise StoreError(f"de-noised labels of {run!r} do not match the stored cell folds ({exc}); {redo}") from None
    return attrs


def selection_key(run: str, name: str) -> str:
    """``denoise/<run>/selections/<name>``, the name checked to stay one path component."""
    return child_key(f"{run_key(run)}/selections", name, "selection")


def has_selection(store, run: str, name: str) -> bool:
    return store.has(f"{selection_key(run, name)}/cells")


def write_selection(store, run: str, name: str, cells: np.ndarray, scores: np.ndarray, attrs: dict,
                    proposed_by: np.ndarray | None = None, flags: dict | None = None) -> None:
    """Write (replace) a selection. ``proposed_by``: per-cell bit flags of the rules that
    picked each cell, ``flags`` their meaning (``{"1": "rule text", ...}``). Review
    decisions of cells that stay selected are kept when the class is unchanged."""
    _require(store, run)
    key = selection_key(run, name)
    cells = np.asarray(cells, dtype=np.int64)
    kept = None
    if store.has(f"{key}/review/state"):
        old_cls = store.attrs(key).get("class")
        if old_cls is None or attrs.get("class") is None or int(old_cls) == int(attrs["class"]):
            kept = read_review(store, run, name)
    store.delete(key)
    store.group(f"{run_key(run)}/selections", create=True)
    store.group(key, create=True)
    n = len(cells)
    store.create_array(f"{key}/cells", (n,), "int64", (max(n, 1),), encoding="cell-rows", overwrite=True,
                       coverage="all")[:] = cells
    store.create_array(f"{key}/scores", (n, 3), "float32", (max(n, 1), 3), encoding="selection-scores",
                       overwrite=True, coverage="all")[:] = np.asarray(scores, dtype=np.float32).reshape(n, 3)
    if proposed_by is not None:
        store.create_array(f"{key}/proposed_by", (n,), "uint8", (max(n, 1),), encoding="selection-rule-flags",
                           overwrite=True, coverage="all", attrs={"flags": dict(flags or {})})[:] = \
            np.asarray(proposed_by, dtype=np.uint8).reshape(n)
    store.update_attrs(key, {"encoding": "hpacli-selection", "encoding_version": 1, **attrs})
    if kept is not None and (kept["state"] != UNREVIEWED).any():
        pos = {int(c): i for i, c in enumerate(kept["cells"])}
        old = np.array([pos.get(int(c), -1) for c in cells], dtype=np.int64)
        idx = np.flatnonzero(old >= 0)
        idx = idx[kept["state"][old[idx]] != UNREVIEWED]
        ensure_review(store, run, name)
        _write_review(store, run, name, idx, kept["state"][old[idx]], kept["time"][old[idx]],
                      kept["who"][old[idx]])


def read_selection(store, run: str, name: str = "mitotic") -> tuple[np.ndarray, dict]:
    key = selection_key(run, name)
    if not store.has(f"{key}/cells"):
        raise StoreError(f"no selection {name!r} for {run!r}; run `hpa select-mitotic --run {run}`")
    return np.asarray(store.array(f"{key}/cells")[:]), dict(store.attrs(key))


def read_selection_details(store, run: str, name: str) -> dict:
    """Everything stored about a selection: ``cells``, ``scores`` [n, 3], ``proposed_by``
    (uint8 [n], zeros when the selection predates it), ``flags`` and ``attrs``."""
    cells, attrs = read_selection(store, run, name)
    key = selection_key(run, name)
    n = len(cells)
    scores = np.asarray(store.array(f"{key}/scores")[:], dtype=np.float32).reshape(n, 3) if \
        store.has(f"{key}/scores") else np.full((n, 3), np.nan, np.float32)
    if store.has(f"{key}/proposed_by"):
        arr = store.array(f"{key}/proposed_by")
        proposed, flags = np.asarray(arr[:], dtype=np.uint8), dict(arr.attrs.get("flags") or {})
    else:
        proposed, flags = np.zeros(n, np.uint8), {}
    return {"cells": cells, "scores": scores, "proposed_by": proposed, "flags": flags, "attrs": attrs}


# ----------------------------------------------------------------------------- review decisions
def review_key(run: str, name: str) -> str:
    return f"{selection_key(run, name)}/review"


def ensure_review(store, run: str, name: str, attrs: dict | None = None) -> str:
    """Create the review arrays of a selection if missing (safe from several processes at
    once: every step runs under the store lock); returns the group key."""
    cells, _ = read_selection(store, run, name)
    n = len(cells)
    key = review_key(run, name)
    chunk = (max(1, min(n, REVIEW_CHUNK)),)
    store.group(key, create=True)
    store.ensure_array(f"{key}/state", (n,), "int8", chunk, encoding="review-state", fill_value=UNREVIEWED,
                       attrs={"states": list(REVIEW_STATES)})
    store.ensure_array(f"{key}/time", (n,), "float64", chunk, encoding="unix-seconds", fill_value=float("nan"))
    store.ensure_array(f"{key}/who", (n,), "str", chunk, encoding="reviewer")
    if store.attrs(key).get("encoding") != REVIEW_ENCODING or attrs:
        store.update_attrs(key, {"encoding": REVIEW_ENCODING, "encoding_version": 1,
                                 "states": list(REVIEW_STATES), **(attrs or {})})
    return key


def has_review(store, run: str, name: str) -> bool:
    return store.has(f"{review_key(run, name)}/state")


def _write_review(store, run, name, idx, states, times, who) -> None:
    key = review_key(run, name)
    idx = np.asarray(idx, dtype=np.int64).reshape(-1)
    if not len(idx):
        return
    with store.lock():
        store.array(f"{key}/state").set_coordinate_selection(idx, np.asarray(states, dtype=np.int8).reshape(-1))
        store.array(f"{key}/time").set_coordinate_selection(idx, np.asarray(times, dtype=np.float64).reshape(-1))
        who_arr = store.array(f"{key}/who")
        for i, w in zip(idx.tolist(), np.asarray(who, dtype=object).reshape(-1).tolist()):
            who_arr[i] = str(w)


def write_decisions(store, run: str, name: str, idx, states, who: str = "", when: float | None = None) -> None:
    """Record decisions for selection positions ``idx`` (0..n-1): ``states`` as ints or
    names of :data:`REVIEW_STATES`. "unreviewed" clears the cell's time and reviewer.
    The review arrays must exist (:func:`ensure_review`). One small write under the store
    lock: the chunk holding the cell is read, changed and written by one process at a time."""
    key = review_key(run, name)
    if not store.has(f"{key}/state"):
        raise StoreError(f"selection {name!r} of {run!r} has no review yet")
    n = int(store.array(f"{key}/state").shape[0])
    idx = np.atleast_1d(np.asarray(idx)).astype(np.int64)
    if not len(idx):
        return
    raw = np.atleast_1d(np.asarray(states, dtype=object))
    if len(raw) == 1 and len(idx) > 1:
        raw = np.repeat(raw, len(idx))
    codes = np.array([REVIEW_STATES.index(s) if isinstance(s, str) and s in REVIEW_STATES else
                      (int(s) if not isinstance(s, str) and 0 <= int(s) < len(REVIEW_STATES) else -1)
                      for s in raw.tolist()], dtype=np.int64)
    if len(codes) != len(idx) or (codes < 0).any():
        raise StoreError(f"review states must be one of {', '.join(REVIEW_STATES)}")
    if len(idx) and (idx.min() < 0 or idx.max() >= n):
        raise StoreError(f"selection positions outside 0..{n - 1}")
    now = time.time() if when is None else float(when)
    times = np.where(codes == UNREVIEWED, math.nan, now)
    whos = np.array(["" if c == UNREVIEWED else str(who) for c in codes], dtype=object)
    _write_review(store, run, name, idx, codes, times, whos)


def read_review(store, run: str, name: str) -> dict | None:
    """``cells``, ``state`` (int8), ``time`` (float64), ``who`` (str) of a selection's
    review, aligned with its cells; None when it was never reviewed. Read under the store
    lock when the lock can be taken (a chunk is never seen half written)."""
    key = review_key(run, name)
    if not store.has(f"{key}/state"):
        return None
    cells, _ = read_selection(store, run, name)

    def read():
        return (np.asarray(store.array(f"{key}/state")[:], dtype=np.int8),
                np.asarray(store.array(f"{key}/time")[:], dtype=np.float64),
                np.array(store.array(f"{key}/who")[:].tolist(), dtype=object))

    try:
        with store.lock():
            state, when, who = read()
    except OSError:  # a read-only place: no lock file can be opened
        state, when, who = read()
    if len(state) != len(cells):
        raise StoreError(f"the review of selection {name!r} of {run!r} does not match its cells; "
                         "select again or delete its review")
    return {"cells": cells, "state": state, "time": when, "who": who}


def review_counts(state: np.ndarray) -> dict:
    state = np.asarray(state)
    out = {s: int((state == i).sum()) for i, s in enumerate(REVIEW_STATES)}
    out["total"] = int(len(state))
    out["reviewed"] = out["total"] - out["unreviewed"]
    return out


def selection_positives(store, run: str, name: str) -> tuple[np.ndarray, dict] | None:
    """Cell rows that selection ``name`` makes positive for its class, and a description
    (``attrs``, ``counts`` of the review or None, ``source``); None when the selection is
    neither accepted nor reviewed (see the module doc for the rule)."""
    cells, attrs = read_selection(store, run, name)
    review = read_review(store, run, name)
    counts = review_counts(review["state"]) if review is not None else None
    if attrs.get("accepted"):
        if review is None:
            return cells, {"attrs": attrs, "counts": None, "source": "accepted"}
        keep = ~np.isin(review["state"], (REJECTED, SKIPPED))
        return cells[keep], {"attrs": attrs, "counts": counts, "source": "accepted, less rejected/skipped"}
    if review is None or counts["reviewed"] == 0:
        return None
    return cells[review["state"] == ACCEPTED], {"attrs": attrs, "counts": counts, "source": "reviewed"}


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
                status = "accepted" if sa.get("accepted") else "to review"
                try:
                    review = read_review(store, run_dir.name, s)
                except StoreError:
                    review = None
                if review is not None:
                    c = review_counts(review["state"])
                    status += f"; reviewed {c['reviewed']}/{c['total']} ({c['accepted']} accepted)"
                rows.append({"run": run_dir.name, "fold": f"selection {s}", "cells": n,
                             "iterations": status, "kNN": "-", "recall@k": "-", "seconds": "-"})
    return ("de-noised labels", rows) if rows else None
