"""Obvious-staining negatives (``hpa negatives``).

Layout (group ``negatives``, provenance of the stage; attrs ``cells_table_id`` of the cells
table the scores belong to (``table_id`` in older stores), ``threshold``, ``top_k``):
``cell_score`` float32 ``[C]`` aligned with the cells table: mean of the cell's ``top_k``
brightest green pixels at 2048-image scale; NaN for cells not scored (images not
labelled Negative). ``cell_flag`` bool ``[C]``: score >= threshold.
``image_flag`` bool ``[N]``: a Negative image with at least one flagged cell.
``image_scored`` bool ``[N]``: the image was scored (labelled Negative, readable, segmented).
``_done``: BlockWork markers over the list of Negative images (attrs ``images``).

Shards: a block's results first go to rows of its own (``block_scores`` float32
``[blocks, max cells of a block]``: the scores of its images' cells in table order;
``block_scored`` bool ``[blocks, block]``), in files that only the block's process writes;
the process that finds every block done (the last shard to finish, or a later run) copies
them into ``cell_score`` / ``image_scored`` and writes the flags.
"""

from __future__ import annotations

import numpy as np

from ..errors import StoreError
from .cellresults import STAMP, stamp_of

GROUP = "negatives"
HINT = "run `hpa negatives` first"
ROW_CHUNK = 16384


PREPARE_LOCK = ".hpa-negatives-prepare.lock"
FINISH_LOCK = ".hpa-negatives-finish.lock"
STAGING = ("block_scores", "block_scored")


def prepare_lock(store):
    return store.lock(PREPARE_LOCK)


def finish_lock(store):
    return store.lock(FINISH_LOCK)


def remove_partial(store) -> None:
    """Drop the files a killed block write left aside (only once every block is done: no writer is left)."""
    from .core import remove_partial_files

    for name in (*STAGING, "_done"):
        remove_partial_files(store, f"{GROUP}/{name}")


def block_cell_counts(offsets: np.ndarray, work_images: np.ndarray, block: int) -> np.ndarray:
    """Cells of each block's images (the block's row length in ``block_scores``)."""
    counts = np.diff(np.asarray(offsets, dtype=np.int64))[np.asarray(work_images, dtype=np.int64)]
    n_blocks = (len(counts) + block - 1) // block
    return np.array([int(counts[b * block:(b + 1) * block].sum()) for b in range(n_blocks)], dtype=np.int64)


def prepare(store, n_cells: int, n_images: int, table_id: str, work_images: np.ndarray, top_k: int,
            overwrite: bool = False, *, block: int = 16, max_cells: int = 1):
    """Create the score arrays, or keep them when they belong to the same cells table,
    image list and ``top_k`` (a resumed run); otherwise start over. Returns the BlockWork
    of the blocks (made first: the staging arrays' files follow its ``per_file``)."""
    from .work import BlockWork, per_file_for, shards_of

    attrs = store.attrs(GROUP) if store.has(GROUP) else {}
    same = (
        stamp_of(attrs) == table_id
        and attrs.get("top_k") == top_k
        and attrs.get("images") == [int(i) for i in work_images]
        and store.has(f"{GROUP}/cell_score")
        and all(store.has(f"{GROUP}/{name}") for name in STAGING)
    )
    if overwrite or not same:
        for name in ("cell_score", "cell_flag", "image_flag", "image_scored", "_done", *STAGING):
            store.delete(f"{GROUP}/{name}")
        store.group(GROUP, create=True)
        store.create_array(f"{GROUP}/cell_score", (n_cells,), "float32", (ROW_CHUNK,), encoding="cell-score",
                           fill_value=np.nan, overwrite=True)
        store.create_array(f"{GROUP}/image_scored", (n_images,), "bool", (65536,), encoding="bool-column",
                           fill_value=False, overwrite=True)
        store.update_attrs(GROUP, {STAMP: table_id, "top_k": int(top_k),
                                   "images": [int(i) for i in work_images]})
    n_blocks = (len(work_images) + block - 1) // block
    work = BlockWork(store, GROUP, len(work_images), block, per_file_for(store, GROUP, "images", block))
    width = max(1, int(max_cells))
    store.ensure_array(f"{GROUP}/block_scores", (max(n_blocks, 1), width), "float32", (1, width),
                       encoding="cell-score-per-block", fill_value=np.nan, coverage="done",
                       shards=shards_of((1, width), work.per_file))
    store.ensure_array(f"{GROUP}/block_scored", (max(n_blocks, 1), block), "bool", (1, block),
                       encoding="image-scored-per-block", fill_value=False, coverage="done",
                       shards=shards_of((1, block), work.per_file))
    return work


def write_block(store, b: int, scores: np.ndarray, scored: np.ndarray) -> None:
    """Block ``b``'s results: the scores of its images' cells (in table order; NaN for images
    not scored) and which of its images were scored."""
    width = int(store.array(f"{GROUP}/block_scores").shape[1])
    row = np.full(width, np.nan, np.float32)
    row[: len(scores)] = np.asarray(scores, dtype=np.float32)
    store.array(f"{GROUP}/block_scores")[b] = row
    flags = np.zeros(int(store.array(f"{GROUP}/block_scored").shape[1]), bool)
    flags[: len(scored)] = np.asarray(scored, dtype=bool)
    store.array(f"{GROUP}/block_scored")[b] = flags


def gather_blocks(store, offsets: np.ndarray, work_images: np.ndarray, block: int) -> None:
    """Copy every block's results into ``cell_score`` and ``image_scored`` (all blocks done)."""
    n_cells = int(store.array(f"{GROUP}/cell_score").shape[0])
    n_images = int(store.array(f"{GROUP}/image_scored").shape[0])
    work_images = np.asarray(work_images, dtype=np.int64)
    for name in STAGING:
        store.require_rows(f"{GROUP}/{name}")
    staged = np.asarray(store.array(f"{GROUP}/block_scores")[:])
    staged_ok = np.asarray(store.array(f"{GROUP}/block_scored")[:]).astype(bool)
    score = np.full(n_cells, np.nan, np.float32)
    scored = np.zeros(n_images, bool)
    for b in range((len(work_images) + block - 1) // block):
        imgs = work_images[b * block:(b + 1) * block]
        rows = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in imgs]) if len(imgs) else \
            np.zeros(0, np.int64)
        score[rows] = staged[b, : len(rows)]
        scored[imgs] = staged_ok[b, : len(imgs)]
    arr = store.array(f"{GROUP}/cell_score")
    if n_cells:
        arr[:] = score
    arr = store.array(f"{GROUP}/image_scored")
    if n_images:
        arr[:] = scored


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
