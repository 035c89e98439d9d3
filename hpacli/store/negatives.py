"""Obvious-staining negatives (``hpa negatives``).

Layout (group ``negatives``, provenance of the stage; attrs ``cells_table_id`` of the cells
table the scores belong to (``table_id`` in older stores), ``threshold``, ``top_k``):
``cell_score`` float32 ``[C]`` aligned with the cells table: mean of the cell's ``top_k``
brightest green pixels at 2048-image scale; NaN for cells not scored (images not
labelled Negative). ``cell_flag`` bool ``[C]``: score >= threshold.
``image_flag`` bool ``[N]``: a Negative image with at least one flagged cell.
``image_scored`` bool ``[N]``: the image was scored (labelled Negative, readable, segmented).
``_done``: BlockWork markers over the list of Negative images (attrs ``images``).
"""

from __future__ import annotations

import numpy as np

from ..errors import StoreError
from .cellresults import STAMP, stamp_of

GROUP = "negatives"
HINT = "run `hpa negatives` first"
ROW_CHUNK = 16384


def prepare(store, n_cells: int, n_images: int, table_id: str, work_images: np.ndarray, top_k: int,
            overwrite: bool = False) -> None:
    """Create the score arrays, or keep them when they belong to the same cells table,
    image list and ``top_k`` (a resumed run); otherwise start over."""
    attrs = store.attrs(GROUP) if store.has(GROUP) else {}
    same = (
        stamp_of(attrs) == table_id
        and attrs.get("top_k") == top_k
        and attrs.get("images") == [int(i) for i in work_images]
        and store.has(f"{GROUP}/cell_score")
    )
    if overwrite or not same:
        for name in ("cell_score", "cell_flag", "image_flag", "image_scored", "_done"):
            store.delete(f"{GROUP}/{name}")
        store.group(GROUP, create=True)
        store.create_array(f"{GROUP}/cell_score", (n_cells,), "float32", (ROW_CHUNK,), encoding="cell-score",
                           fill_value=np.nan, overwrite=True)
        store.create_array(f"{GROUP}/image_scored", (n_images,), "bool", (65536,), encoding="bool-column",
                           fill_value=False, overwrite=True)
        store.update_attrs(GROUP, {STAMP: table_id, "top_k": int(top_k),
                                   "images": [int(i) for i in work_images]})


def write_scores(store, rows: slice, scores: np.ndarray) -> None:
    store.array(f"{GROUP}/cell_score")[rows] = np.asarray(scores, dtype=np.float32)


def mark_scored(store, images: np.ndarray) -> None:
    images = np.asarray(images, dtype=np.int64)
    if len(images):
        arr = store.array(f"{GROUP}/image_scored")
        arr.set_coordinate_selection(images, True)


def read_scores(store) -> np.ndarray:
    if not store.has(f"{GROUP}/cell_score"):
        raise StoreError(f"the store {store.path} has no negative scores; {HINT}")
    _check_table(store)
    return np.asarray(store.array(f"{GROUP}/cell_score")[:]).astype(np.float32)


def write_flags(store, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Flags from the stored scores: per cell (score >= threshold) and per image (any cell)."""
    from .cells import CellTable

    scores = read_scores(store)
    with np.errstate(invalid="ignore"):
        cell_flag = np.nan_to_num(scores, nan=-1.0) >= threshold
    cells = CellTable(store)
    image = cells.column("image").astype(np.int64)
    n_images = store.images.n
    image_flag = np.zeros(n_images, dtype=bool)
    image_flag[image[cell_flag]] = True
    arr = store.create_array(f"{GROUP}/cell_flag", cell_flag.shape, "bool", (ROW_CHUNK,), encoding="bool-column",
                             fill_value=False, overwrite=True, coverage="all")
    if len(cell_flag):
        arr[:] = cell_flag
    arr = store.create_array(f"{GROUP}/image_flag", (n_images,), "bool", (65536,), encoding="bool-column",
                             fill_value=False, overwrite=True, coverage="all")
    if n_images:
        arr[:] = image_flag
    store.update_attrs(GROUP, {"threshold": float(threshold)})
    return cell_flag, image_flag


def _check_table(store) -> None:
    from .cells import CellTable

    want = stamp_of(store.attrs(GROUP))
    if want != CellTable(store).table_id:
        raise StoreError("the negative scores belong to an older cells table (segmentation was redone); "
                         "run `hpa negatives` again")


def read_cell_flags(store) -> np.ndarray:
    """bool ``[C]`` aligned with the current cells table."""
    if not store.has(f"{GROUP}/cell_flag"):
        raise StoreError(f"the store {store.path} has no negative flags; {HINT}")
    _check_table(store)
    return np.asarray(store.array(f"{GROUP}/cell_flag")[:]).astype(bool)


def read_image_flags(store) -> np.ndarray:
    """bool ``[N]``: Negative images with an obviously stained cell (False for all others)."""
    if not store.has(f"{GROUP}/image_flag"):
        raise StoreError(f"the store {store.path} has no negative flags; {HINT}")
    _check_table(store)
    flags = np.asarray(store.array(f"{GROUP}/image_flag")[:]).astype(bool)
    n = store.images.n
    if len(flags) < n:
        flags = np.concatenate([flags, np.zeros(n - len(flags), bool)])
    return flags[:n]


def read_image_scored(store) -> np.ndarray:
    if not store.has(f"{GROUP}/image_scored"):
        raise StoreError(f"the store {store.path} has no negative scores; {HINT}")
    return np.asarray(store.array(f"{GROUP}/image_scored")[:]).astype(bool)
