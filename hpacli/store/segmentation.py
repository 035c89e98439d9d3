"""Layout of the ``segment`` stage: label images per image, written in blocks.

Group ``segment`` (provenance + attributes ``canvas`` [Hc, Wc], ``block_size``):

``segment/cells``, ``segment/nuclei``
    uint16 ``[N, Hc, Wc]``, one chunk per image (lz4). Image i's labels live in
    ``[i, :h, :w]`` with ``(h, w) = mask_shape[i]``; the rest is 0. 0 = background, cells
    1..n, a nucleus carries its cell's id. The canvas is the largest mask shape of the
    images table when the arrays were created.
``segment/mask_shape``
    int32 ``[N, 2]``: the mask resolution of each image. The default rule
    (:func:`mask_shape_for`): scale 0.25 for images of 1024 px or more (the HPA networks'
    scale; 2048² -> 512², 1728² -> 432², 3072² -> 768²), else 1.0.
``segment/n_cells``
    int32 ``[N]``: number of cells; 0 = segmented, no cells; -1 = not segmented yet;
    -2 = the image could not be read (reported, skipped).
``segment/_done``
    BlockWork done markers (per-image arrays are chunked by block, so shards write
    disjoint chunks).

Mask resolution -> original resolution is nearest neighbour: original row ``r`` shows mask
row ``floor(r * h / H)`` (:func:`read_labels_full`). The ``cells`` table (store/cells.py)
is built from these label images by whichever process completes the last block; its
bboxes and areas are exact for that nearest-neighbour upsampling.
"""

from __future__ import annotations

import numpy as np

from ..errors import StoreError

GROUP = "segment"
BLOCK = 16
HINT = "run `hpa segment` first"
NOT_DONE = -1
FAILED = -2
FINISH_LOCK = ".hpa-segment-finish.lock"
LAYOUT_LOCK = ".hpa-segment-layout.lock"


def default_mask_scale(height: int, width: int) -> float:
    return 0.25 if min(int(height), int(width)) >= 1024 else 1.0


def mask_shape_for(height: int, width: int, mask_scale: float | None = None) -> tuple[int, int]:
    s = default_mask_scale(height, width) if mask_scale is None else float(mask_scale)
    return max(1, int(round(height * s))), max(1, int(round(width * s)))


def nearest_index(n_out: int, n_in: int) -> np.ndarray:
    """Source index of each output index for nearest resizing (same rule as the post-processing)."""
    return (np.arange(n_out, dtype=np.int64) * n_in) // n_out


def first_full_index(n_mask: int, n_full: int) -> np.ndarray:
    """For each mask row k (and one past the end), the first original row showing it."""
    k = np.arange(n_mask + 1, dtype=np.int64)
    return (k * n_full + n_mask - 1) // n_mask


def downsample_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Labels at original size -> mask shape, picking for each mask pixel the first original
    pixel that shows it (exact inverse of the nearest upsampling)."""
    h, w = labels.shape
    if (h, w) == tuple(shape):
        return labels
    rows = first_full_index(shape[0], h)[:-1]
    cols = first_full_index(shape[1], w)[:-1]
    return labels[np.ix_(rows, cols)]


# ------------------------------------------------------------------------------ layout
def ensure_layout(store, n_images: int, canvas: tuple[int, int], block_size: int = BLOCK) -> None:
    """Create or grow the arrays for ``n_images``. Growing reopens the block that held the
    old last image (its done marker is cleared): its new images have no labels yet, and a
    done block promises every image's chunks (``hpa info --check``)."""
    with store.lock(LAYOUT_LOCK):
        _ensure_layout(store, n_images, canvas, block_size)


def _ensure_layout(store, n_images: int, canvas: tuple[int, int], block_size: int) -> None:
    n = int(n_images)
    old_n = int(store.array(f"{GROUP}/n_cells").shape[0]) if store.has(f"{GROUP}/n_cells") else 0
    hc, wc = int(canvas[0]), int(canvas[1])
    store.group(GROUP, create=True)
    attrs = store.attrs(GROUP)
    old = attrs.get("canvas")
    if old is not None and (hc > old[0] or wc > old[1]):
        raise StoreError(
            f"new images need masks of {hc}x{wc} but the stored masks are {old[0]}x{old[1]}; "
            "segment again with --overwrite"
        )
    if old is not None:
        hc, wc = int(old[0]), int(old[1])
    else:
        store.update_attrs(GROUP, {"canvas": [hc, wc], "block_size": int(block_size)})
    for name in ("cells", "nuclei"):
        store.ensure_array(f"{GROUP}/{name}", (n, hc, wc), "uint16", (1, hc, wc),
                           encoding="label-image-uint16", compression="lz4", coverage="done")
    store.ensure_array(f"{GROUP}/mask_shape", (n, 2), "int32", (block_size, 2), encoding="mask-shape", coverage="done")
    store.ensure_array(f"{GROUP}/n_cells", (n,), "int32", (block_size,), encoding="cells-per-image",
                       fill_value=NOT_DONE, coverage="done")
    if 0 < old_n < n and old_n % block_size and store.has(f"{GROUP}/_done"):
        done = store.array(f"{GROUP}/_done")
        if old_n // block_size < done.shape[0]:
            done[old_n // block_size] = False


def canvas_of(store) -> tuple[int, int]:
    c = store.attrs(GROUP).get("canvas")
    if c is None:
        raise StoreError(f"the store {store.path} has no segmentation; {HINT}")
    return int(c[0]), int(c[1])


def n_cells(store) -> np.ndarray:
    """Per image: number of cells, 0 none, -1 not segmented, -2 unreadable."""
    if not store.has(f"{GROUP}/n_cells"):
        return np.full(store.images.n, NOT_DONE, dtype=np.int32)
    store.require_rows(f"{GROUP}/n_cells")
    arr = np.asarray(store.array(f"{GROUP}/n_cells")[:]).astype(np.int32)
    n = store.images.n
    if len(arr) < n:
        arr = np.concatenate([arr, np.full(n - len(arr), NOT_DONE, np.int32)])
    return arr[:n]


def write_block(store, start: int, stop: int, results: dict[int, tuple[np.ndarray, np.ndarray] | None]) -> None:
    """Write the labels of images ``start:stop`` (a block); ``results[i]`` is (nuclei, cells) at
    mask resolution, or None for an unreadable image. Images of the block that are not in
    ``results`` keep what they have."""
    hc, wc = canvas_of(store)
    cells_arr = store.array(f"{GROUP}/cells")
    nuc_arr = store.array(f"{GROUP}/nuclei")
    shape_arr = store.array(f"{GROUP}/mask_shape")
    count_arr = store.array(f"{GROUP}/n_cells")
    shapes = np.asarray(shape_arr[start:stop]).copy()
    counts = np.asarray(count_arr[start:stop]).copy()
    for i, res in sorted(results.items()):
        k = i - start
        canvas_c = np.zeros((hc, wc), np.uint16)
        canvas_n = np.zeros((hc, wc), np.uint16)
        if res is None:
            shapes[k] = (0, 0)
            counts[k] = FAILED
        else:
            nuc, cells = res
            h, w = cells.shape
            if h > hc or w > wc:
                raise StoreError(f"labels of image {i} are {h}x{w}, larger than the stored canvas {hc}x{wc}")
            ids = np.unique(cells)
            ids = ids[ids != 0]
            if len(ids) and (ids[-1] > 65535 or len(ids) != ids[-1]):
                raise ValueError("cell labels must be 1..n (n <= 65535)")
            canvas_c[:h, :w] = cells
            canvas_n[:h, :w] = nuc
            shapes[k] = (h, w)
            counts[k] = len(ids)
        cells_arr[i] = canvas_c
        nuc_arr[i] = canvas_n
    shape_arr[start:stop] = shapes
    count_arr[start:stop] = counts


# ------------------------------------------------------------------------------ reading
def _check(store, image_index: int) -> tuple[int, int]:
    if not store.has(f"{GROUP}/n_cells"):
        raise StoreError(f"the store {store.path} has no segmentation; {HINT}")
    i = int(image_index)
    status = int(store.array(f"{GROUP}/n_cells")[i]) if i < store.array(f"{GROUP}/n_cells").shape[0] else NOT_DONE
    if status == NOT_DONE:
        raise StoreError(f"image {i} is not segmented yet; {HINT}")
    for name in ("mask_shape", "cells", "nuclei"):
        store.require_rows(f"{GROUP}/{name}", (i, i + 1))
    h, w = (int(v) for v in store.array(f"{GROUP}/mask_shape")[i])
    return h, w


def read_labels(store, image_index: int) -> tuple[np.ndarray, np.ndarray]:
    """(nuclei, cells) uint16 label images of one image at mask resolution."""
    h, w = _check(store, image_index)
    if h == 0:  # unreadable image: no cells
        return np.zeros((0, 0), np.uint16), np.zeros((0, 0), np.uint16)
    nuc = np.asarray(store.array(f"{GROUP}/nuclei")[int(image_index), :h, :w])
    cells = np.asarray(store.array(f"{GROUP}/cells")[int(image_index), :h, :w])
    return nuc, cells


def _original_size(store, image_index: int) -> tuple[int, int]:
    return store.images.size_of(image_index)


def read_labels_full(store, image_index: int) -> tuple[np.ndarray, np.ndarray]:
    """(nuclei, cells) nearest-upsampled to the image's original size."""
    nuc, cells = read_labels(store, image_index)
    H, W = _original_size(store, image_index)
    if nuc.size == 0:
        return np.zeros((H, W), np.uint16), np.zeros((H, W), np.uint16)
    rows = nearest_index(H, nuc.shape[0])
    cols = nearest_index(W, nuc.shape[1])
    return nuc[np.ix_(rows, cols)], cells[np.ix_(rows, cols)]


def mask_scale(store, image_index: int) -> float:
    """Mask resolution / original resolution of one image (e.g. 0.25)."""
    h, _ = _check(store, image_index)
    H, _ = _original_size(store, image_index)
    return h / H if H else 1.0


# ------------------------------------------------------------------------------ cells table
def cell_rows(nuc: np.ndarray, cells: np.ndarray, H: int, W: int) -> dict[str, np.ndarray]:
    """Per-cell columns (cell_id, bbox, area, nucleus_bbox, border) at original resolution
    from mask-resolution labels."""
    n = int(cells.max()) if cells.size else 0
    empty = {"cell_id": np.zeros(0, np.int32), "bbox": np.zeros((0, 4), np.int32), "area": np.zeros(0, np.int64),
             "nucleus_bbox": np.zeros((0, 4), np.int32), "border": np.zeros(0, bool)}
    if n == 0:
        return empty
    from scipy import ndimage as ndi

    h, w = cells.shape
    fr = first_full_index(h, H)
    fc = first_full_index(w, W)
    row_mult = np.diff(fr)
    col_mult = np.diff(fc)
    weights = (row_mult[:, None] * col_mult[None, :]).ravel()
    area = np.bincount(cells.ravel(), weights=weights, minlength=n + 1)[1:].astype(np.int64)
    boxes = ndi.find_objects(cells, max_label=n)
    nboxes = ndi.find_objects(nuc, max_label=n)
    ids, bbox, nbbox, border = [], [], [], []
    for k, (b, nb) in enumerate(zip(boxes, nboxes), start=1):
        if b is None:
            continue
        ids.append(k)
        bbox.append((fr[b[0].start], fc[b[1].start], fr[b[0].stop], fc[b[1].stop]))
        border.append(b[0].start == 0 or b[1].start == 0 or b[0].stop == h or b[1].stop == w)
        nbbox.append((-1, -1, -1, -1) if nb is None else (fr[nb[0].start], fc[nb[1].start], fr[nb[0].stop], fc[nb[1].stop]))
    ids_a = np.asarray(ids, np.int32)
    return {"cell_id": ids_a, "bbox": np.asarray(bbox, np.int32).reshape(-1, 4), "area": area[ids_a - 1],
            "nucleus_bbox": np.asarray(nbbox, np.int32).reshape(-1, 4), "border": np.asarray(border, bool)}


def build_cells_table(store, progress=None, params: dict | None = None) -> int:
    """Build the ``cells`` table from the stored label images (streams one image at a time).
    ``nucleus_bbox`` is (-1, -1, -1, -1) for a cell without a nucleus. Returns the cell count."""
    from ..progress import NullProgress, add_task
    from .cells import write_cells_table

    progress = progress or NullProgress()
    n = store.images.n
    counts = n_cells(store)
    heights, widths = store.images.sizes()
    task = add_task(progress, "cells table", n, unit="img")
    cols: dict[str, list] = {k: [] for k in ("image", "cell_id", "bbox", "area", "nucleus_bbox", "border")}
    for i in range(n):
        if counts[i] > 0:
            nuc, cells = read_labels(store, i)
            rows = cell_rows(nuc, cells, int(heights[i]), int(widths[i]))
            for k, v in rows.items():
                cols[k].append(v)
            cols["image"].append(np.full(len(rows["cell_id"]), i, np.int32))
        progress.advance(task)
    def cat(name, tail):
        parts = cols[name]
        return np.concatenate(parts) if parts else np.zeros((0, *tail))
    columns = {"image": cat("image", ()), "cell_id": cat("cell_id", ()), "bbox": cat("bbox", (4,)),
               "area": cat("area", ()), "nucleus_bbox": cat("nucleus_bbox", (4,)), "border": cat("border", ())}
    write_cells_table(store, columns, n, params=params)
    return int(len(columns["image"]))


def finish_lock(store):
    """A lock of its own for building the cells table (``Store.lock`` is taken inside
    ``write_cells_table``, so it cannot be held around it)."""
    return store.lock(FINISH_LOCK)


# ------------------------------------------------------------------------------ the stage's record
def previous_params(store) -> dict:
    """The parameters the segmentation in the store was made with ({} when none)."""
    return dict((store.attrs(GROUP).get("provenance") or {}).get("params") or {})


def has_settings(store) -> bool:
    """True when the segmentation records the options that decide its masks (``claim_settings``)."""
    return "settings" in store.attrs(GROUP)


def clear(store) -> None:
    """Delete the segmentation (``--overwrite``)."""
    store.delete(GROUP)


def cells_table_current(store, n_images: int) -> bool:
    """True when the cells table exists, covers ``n_images`` and is the one this
    segmentation built."""
    from .cells import CellTable, covers

    if not covers(store, n_images):
        return False
    return CellTable(store).table_id == store.attrs(GROUP).get("cells_table_id")


def note_cells_table(store) -> str:
    """Record the cells table just built from this segmentation; returns its id."""
    from .cells import CellTable

    table_id = CellTable(store).table_id
    store.update_attrs(GROUP, {"cells_table_id": table_id})
    return table_id


def summary_section(store):
    """``hpa info`` section: segmentation coverage."""
    if not store.has(f"{GROUP}/n_cells"):
        return None
    c = n_cells(store)
    done = c >= 0
    return "segmentation", [{
        "images": int(len(c)), "segmented": int(done.sum()), "without cells": int((c == 0).sum()),
        "unreadable": int((c == FAILED).sum()), "cells": int(c[done].sum()),
    }]
