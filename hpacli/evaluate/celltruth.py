"""Cell-level truth for the segmented cells (synthetic data): which classes each row of the
cells table truly shows, by matching segmented cells to truth instances (IoU ≥ 0.5)."""

from __future__ import annotations

import numpy as np

from ..classes import N_CLASSES


def match_labels(pred: np.ndarray, truth: np.ndarray, min_iou: float = 0.5) -> dict[int, int]:
    """Map each predicted label id to the truth id it overlaps with IoU ≥ ``min_iou``."""
    p = pred.ravel().astype(np.int64)
    t = truth.ravel().astype(np.int64)
    both = (p > 0) & (t > 0)
    if not both.any():
        return {}
    pairs, inter = np.unique(p[both] * (int(t.max()) + 1) + t[both], return_counts=True)
    pid, tid = np.divmod(pairs, int(t.max()) + 1)
    p_area = np.bincount(p, minlength=int(p.max()) + 1)
    t_area = np.bincount(t, minlength=int(t.max()) + 1)
    iou = inter / (p_area[pid] + t_area[tid] - inter)
    keep = iou >= min_iou  # at IoU ≥ 0.5 a cell matches at most one instance
    return {int(a): int(b) for a, b in zip(pid[keep], tid[keep])}


def cell_truth(store, images=None, min_iou: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """``(classes bool [C, 19], matched bool [C])`` for the cells of ``images`` (default: every
    image with truth). Rows of other images, and unmatched cells, stay all False."""
    from ..store.cells import CellTable
    from ..store.segmentation import read_labels_full
    from ..store.truth import TruthReader

    cells = CellTable(store)
    n = cells.n
    classes = np.zeros((n, N_CLASSES), dtype=bool)
    matched = np.zeros(n, dtype=bool)
    reader = TruthReader(store)
    has = reader.has
    todo = np.flatnonzero(has) if images is None else [int(i) for i in images if has[int(i)]]
    cell_id = cells.column("cell_id")
    for i in todo:
        rows = cells.rows_of(int(i))
        if rows.stop == rows.start:
            continue
        truth, truth_classes = reader.label_images(int(i))
        _, seg = read_labels_full(store, int(i))
        mapping = match_labels(seg, truth, min_iou)
        for r in range(rows.start, rows.stop):
            t = mapping.get(int(cell_id[r]))
            if t is not None:
                matched[r] = True
                classes[r, sorted(truth_classes.get(t, ()))] = True
    return classes, matched
