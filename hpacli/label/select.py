"""Selecting cells whose de-noised label says "class c" where the pseudo-label did not.

Three rules, all for one class column ``c`` (mitotic spindle = 11 by default):

threshold (the seed's)
    ``Y_init[:, c] < init_below`` and ``Y_opt[:, c] ≥ frac · max(Y_opt[:, c])``. A single
    outlier at the maximum can make it select nothing, so :func:`selection_counts` always
    reports what every rule picks.
top K
    the ``K`` highest ``Y_opt[:, c]`` among the cells with ``Y_init[:, c] < init_below``.
neighbours
    cells that appear at least ``min_hits`` times among the first ``k`` neighbours of the
    known positive cells (``Y_init[:, c] ≥ positive_at`` or hand-picked), themselves excluded.

Known positives come from the pseudo-labels (the seed's way) or, with ``known="outliers"``,
from the image labels: a class that only a few cells of an image show is carried by the
cells that look unlike the rest of their image, so in each image labelled with ``c`` the
``per_image`` cells whose embedding lies farthest from the mean of the image's other cells
(:func:`image_outliers`) are taken as known. This finds the rare cells when the image-level
model is too weak to point at them (its Y_init is then flat within an image), which is
exactly when a rare class such as the mitotic spindle needs the selection most.

Every function returns cell indices (into the fold's rows) sorted by descending score.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import HpaError, InputError

MITOTIC_SPINDLE = 11


def _column(y: np.ndarray, cls: int, name: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 2:
        raise InputError(f"{name} must be [cells, classes], got shape {y.shape}")
    if not 0 <= cls < y.shape[1]:
        raise HpaError(f"class {cls} is out of range: {name} has {y.shape[1]} columns")
    return y[:, cls].astype(np.float64)


def _by_score(idx: np.ndarray, score: np.ndarray) -> np.ndarray:
    idx = np.asarray(idx, dtype=np.int64)
    return idx[np.argsort(-score[idx], kind="stable")]


def select_threshold(y_init, y_opt, cls: int = MITOTIC_SPINDLE, init_below: float = 0.4,
                     opt_frac: float = 0.92) -> np.ndarray:
    """``Y_init[:, c] < init_below`` and ``Y_opt[:, c] ≥ opt_frac · max(Y_opt[:, c])``."""
    yi, yo = _column(y_init, cls, "Y_init"), _column(y_opt, cls, "Y_opt")
    if len(yi) != len(yo):
        raise InputError(f"Y_init has {len(yi)} cells, Y_opt {len(yo)}")
    if len(yo) == 0:
        return np.zeros(0, dtype=np.int64)
    top = float(yo.max())
    if top <= 0:
        return np.zeros(0, dtype=np.int64)
    return _by_score(np.flatnonzero((yi < init_below) & (yo >= opt_frac * top)), yo)


def select_top(y_init, y_opt, k: int, cls: int = MITOTIC_SPINDLE, init_below: float = 0.4) -> np.ndarray:
    """The ``k`` highest ``Y_opt[:, c]`` among cells with ``Y_init[:, c] < init_below``."""
    if k < 0:
        raise HpaError(f"--top must be at least 0, got {k}")
    yi, yo = _column(y_init, cls, "Y_init"), _column(y_opt, cls, "Y_opt")
    cand = np.flatnonzero(yi < init_below)
    return _by_score(cand, yo)[: int(k)]


def known_positives(y_init, cls: int = MITOTIC_SPINDLE, positive_at: float = 0.5,
                    hand_picked: np.ndarray | None = None) -> np.ndarray:
    yi = _column(y_init, cls, "Y_init")
    pos = yi >= positive_at
    if hand_picked is not None:
        pos[np.asarray(hand_picked, dtype=np.int64)] = True
    return np.flatnonzero(pos)


def neighbour_hits(knn_indices: np.ndarray, positives: np.ndarray, k: int | None = None) -> np.ndarray:
    """How often each cell appears among the ``k`` nearest *other* cells of the ``positives``
    (the stored lists never hold the cell itself, so a positive does not count as its own hit;
    the graph's k counts the cell, so at most k − 1 others are stored)."""
    knn_indices = np.asarray(knn_indices)
    n = knn_indices.shape[0]
    k = knn_indices.shape[1] if k is None else int(k)
    if not 1 <= k <= knn_indices.shape[1]:
        raise HpaError(f"--neighbours must be 1..{knn_indices.shape[1]} (the stored other cells: the de-noising "
                       f"graph's k = {knn_indices.shape[1] + 1} counts the cell itself), got {k}")
    neigh = knn_indices[np.asarray(positives, dtype=np.int64), :k].reshape(-1)
    return np.bincount(neigh, minlength=n)


def select_neighbours(knn_indices, positives, k: int | None = None, min_hits: int = 3,
                      exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Cells with ≥ ``min_hits`` appearances among the positives' k-NN; returns (cells, hits)."""
    hits = neighbour_hits(knn_indices, positives, k)
    ok = hits >= int(min_hits)
    ok[np.asarray(positives, dtype=np.int64)] = False
    if exclude is not None:
        ok[np.asarray(exclude, dtype=np.int64)] = False
    idx = _by_score(np.flatnonzero(ok), hits.astype(np.float64))
    return idx, hits[idx]


def image_outliers(emb: np.ndarray, image: np.ndarray) -> np.ndarray:
    """For each row (cells, with their image index): 1 − cosine similarity between the
    cell's embedding and the mean embedding of the other cells of its image; 0 for a cell
    alone in its image. ``emb`` is ``[n, D]``, rows of one image need not be contiguous."""
    emb = np.asarray(emb, dtype=np.float64)
    image = np.asarray(image, dtype=np.int64)
    if emb.ndim != 2 or len(emb) != len(image):
        raise InputError(f"embeddings {emb.shape} and image indices {image.shape} do not match")
    if len(emb) == 0:
        return np.zeros(0)
    if not np.isfinite(emb).all():
        raise InputError("embeddings hold NaN or infinite values")
    e = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    groups, inv = np.unique(image, return_inverse=True)
    sums = np.zeros((len(groups), e.shape[1]))
    np.add.at(sums, inv, e)
    counts = np.bincount(inv, minlength=len(groups))
    others = sums[inv] - e
    norm = np.linalg.norm(others, axis=1)
    score = 1.0 - np.einsum("ij,ij->i", e, others) / np.maximum(norm, 1e-12)
    score[counts[inv] < 2] = 0.0
    return score


def outlier_positives(score: np.ndarray, image: np.ndarray, per_image: int = 1) -> np.ndarray:
    """Indices of the ``per_image`` highest-scoring rows of each image (ties: first row)."""
    if per_image < 1:
        raise HpaError(f"--per-image must be at least 1, got {per_image}")
    score = np.asarray(score, dtype=np.float64)
    image = np.asarray(image, dtype=np.int64)
    order = np.lexsort((np.arange(len(score)), -score, image))
    img_sorted = image[order]
    first = np.r_[0, np.flatnonzero(np.diff(img_sorted)) + 1] if len(order) else np.zeros(0, dtype=np.int64)
    rank = np.arange(len(order)) - np.repeat(first, np.diff(np.r_[first, len(order)]))
    return np.sort(order[rank < per_image])


@dataclass
class SelectionCounts:
    threshold: int
    top: int | None
    neighbours: int | None
    below_bound: int
    max_opt: float

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}


def selection_counts(y_init, y_opt, cls: int = MITOTIC_SPINDLE, init_below: float = 0.4, opt_frac: float = 0.92,
                     top: int | None = None, knn_indices=None, neighbours: int | None = None, min_hits: int = 3,
                     positive_at: float = 0.5) -> SelectionCounts:
    """How many cells each rule picks (the threshold rule can pick none: a lone maximum)."""
    yi, yo = _column(y_init, cls, "Y_init"), _column(y_opt, cls, "Y_opt")
    n_top = len(select_top(y_init, y_opt, top, cls, init_below)) if top is not None else None
    n_nb = None
    if knn_indices is not None and neighbours is not None:
        # the neighbour rule, restricted like the others to cells under the bound
        pos = known_positives(y_init, cls, positive_at)
        idx, _ = select_neighbours(knn_indices, pos, neighbours, min_hits)
        n_nb = int((yi[idx] < init_below).sum())
    return SelectionCounts(len(select_threshold(y_init, y_opt, cls, init_below, opt_frac)), n_top, n_nb,
                           int((yi < init_below).sum()), float(yo.max()) if len(yo) else 0.0)


def precision_recall(selected: np.ndarray, truth: np.ndarray) -> tuple[int, float, float]:
    """(true positives, precision, recall) of a selection against a set of planted cells."""
    selected = np.asarray(selected, dtype=np.int64)
    truth = np.asarray(truth, dtype=np.int64)
    tp = int(np.isin(selected, truth).sum())
    prec = tp / len(selected) if len(selected) else 0.0
    rec = tp / len(truth) if len(truth) else 0.0
    return tp, prec, rec
