"""Folds: leak-free image folds (image- and cell-level models) and cell folds (label de-noising).

Image folds: iterative stratification (``MultilabelStratifiedKFold``, shuffled, seeded) on
the 19 labels plus a "public image" column. Duplicate groups from ``hpa dedup`` are
handled one of three ways:

* ``group`` (default, leak-free): each group is stratified as one item carrying the OR of
  its members' labels (public when any member is public); every member gets its fold.
  Groups count as one item, so a fold's count of a label can differ from its share by
  about the size of the largest groups.
* ``drop`` (what the original solution did): one image per group is kept (its first row),
  the other members get no fold (-1).
* ``ignore``: duplicates are not looked at (no `hpa dedup` needed; folds may leak).

Images without a fold (-1): test images, unlabelled images, dropped duplicates and, with
``negatives="obvious"``, Negative images that `hpa negatives` did not flag.

Cell folds: within each image the cells are split as evenly as possible over the folds
(counts differ by at most one): a seeded random order of the image's cells is dealt out
round-robin starting at a seeded random fold, so an image with one cell lands in a
seeded random fold and the remainders of all images spread evenly in expectation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..classes import CLASS_NAMES, N_CLASSES, NEGATIVE
from ..summary import Summary

DUPLICATE_MODES = ("group", "drop", "ignore")
NEGATIVE_MODES = ("all", "obvious")


@dataclass
class FoldSummary(Summary):
    n_images: int = 0
    in_folds: int = 0
    dropped_duplicates: int = 0
    excluded_negatives: int = 0
    test_or_unlabelled: int = 0
    distribution: list = field(default_factory=list)


@dataclass
class CellFoldSummary(Summary):
    n_cells: int = 0
    in_folds: int = 0
    cells_per_fold: list = field(default_factory=list)
    single_cell_images: int = 0


def stratify_folds(y: np.ndarray, n_splits: int, seed: int) -> np.ndarray:
    """Fold of each row of the multi-hot matrix ``y`` by iterative stratification."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    y = np.asarray(y).astype(int)
    fold = np.full(len(y), -1, dtype=np.int8)
    splitter = MultilabelStratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    for k, (_, test) in enumerate(splitter.split(np.zeros((len(y), 1)), y)):
        fold[test] = k
    return fold


def image_folds(
    labels: np.ndarray,
    public: np.ndarray,
    eligible: np.ndarray,
    n_splits: int = 5,
    seed: int = 42,
    groups: np.ndarray | None = None,
    duplicates: str = "group",
) -> np.ndarray:
    """int8 ``[N]`` fold per image (-1 = none).

    ``labels`` uint8 ``[N, 19]``; ``public`` bool ``[N]`` (public HPA vs competition image);
    ``eligible`` bool ``[N]``: images that may take a fold; ``groups`` int ``[N]`` duplicate
    group per image (any ids; needed unless ``duplicates == "ignore"``).
    """
    from ..errors import HpaError

    if duplicates not in DUPLICATE_MODES:
        raise HpaError(f"duplicates must be one of {', '.join(DUPLICATE_MODES)}, not {duplicates!r}")
    if n_splits < 2:
        raise HpaError(f"--n-splits must be at least 2, got {n_splits}")
    n = len(labels)
    y_all = np.concatenate([np.asarray(labels, dtype=np.uint8), np.asarray(public, dtype=np.uint8)[:, None]], 1)
    idx = np.flatnonzero(eligible)
    fold = np.full(n, -1, dtype=np.int8)
    if duplicates != "ignore" and groups is None:
        raise HpaError("duplicate groups are needed; run `hpa dedup` first")
    if duplicates == "ignore":
        members, y = idx, y_all[idx]
        item_of = np.arange(len(idx))
    else:
        g = np.asarray(groups)[idx]
        uniq, first, item_of = np.unique(g, return_index=True, return_inverse=True)
        if duplicates == "drop":
            members, y = idx[first], y_all[idx[first]]
            item_of = np.arange(len(first))
        else:
            members = idx
            y = np.zeros((len(uniq), y_all.shape[1]), dtype=np.uint8)
            np.maximum.at(y, item_of, y_all[idx])
    if len(y) < n_splits:
        raise HpaError(f"only {len(y)} independent image(s) can take a fold; --n-splits {n_splits} needs more")
    item_fold = stratify_folds(y, n_splits, seed)
    fold[members] = item_fold[item_of]
    return fold


def cell_folds(offsets: np.ndarray, eligible_images: np.ndarray, n_splits: int = 3, seed: int = 42) -> np.ndarray:
    """int8 ``[C]`` fold per cell (cells of image i are rows ``offsets[i]:offsets[i+1]``);
    cells of images that are not eligible get -1."""
    from ..errors import HpaError

    if n_splits < 2:
        raise HpaError(f"--n-splits must be at least 2, got {n_splits}")
    offsets = np.asarray(offsets, dtype=np.int64)
    n_cells = int(offsets[-1]) if len(offsets) else 0
    counts = np.diff(offsets)
    image = np.repeat(np.arange(len(counts)), counts)
    rng = np.random.default_rng(seed)
    start = rng.integers(0, n_splits, size=len(counts))
    key = rng.random(n_cells)
    order = np.lexsort((key, image))  # cells by image, shuffled within each image
    rank = np.empty(n_cells, dtype=np.int64)
    rank[order] = np.arange(n_cells) - offsets[image[order]]
    fold = ((rank + start[image]) % n_splits).astype(np.int8)
    fold[~np.asarray(eligible_images, dtype=bool)[image]] = -1
    return fold


def distribution(labels: np.ndarray, fold: np.ndarray, n_splits: int) -> list[dict]:
    """Rows: each class (and "images") with its count in each fold and the total."""
    rows = []
    used = fold >= 0
    per_fold = [np.asarray(labels)[fold == k].sum(axis=0) for k in range(n_splits)]
    rows.append({"class": "images", **{f"fold {k}": int((fold == k).sum()) for k in range(n_splits)},
                 "total": int(used.sum())})
    for c in range(N_CLASSES):
        rows.append({"class": f"{c} {CLASS_NAMES[c]}", **{f"fold {k}": int(per_fold[k][c]) for k in range(n_splits)},
                     "total": int(sum(int(p[c]) for p in per_fold))})
    return rows


def run_fold(
    store,
    *,
    n_splits: int = 5,
    seed: int = 42,
    name: str = "default",
    duplicates: str = "group",
    negatives: str = "all",
) -> FoldSummary:
    """Image folds into ``folds/images/<name>``; returns a summary with the distribution."""
    from ..errors import HpaError
    from ..store import begin_stage
    from ..store.folds import image_folds_key, write_image_folds

    store.require_writable()
    images = store.images
    if images.n == 0:
        raise HpaError(f"the store {store.path} has no images; run `hpa ingest` first")
    if negatives not in NEGATIVE_MODES:
        raise HpaError(f"--negatives must be one of {', '.join(NEGATIVE_MODES)}, not {negatives!r}")
    if duplicates not in DUPLICATE_MODES:
        raise HpaError(f"duplicates must be one of {', '.join(DUPLICATE_MODES)}, not {duplicates!r}")
    df = images.df()
    labels = images.labels()
    eligible = (df["split"].to_numpy() == "train") & df["labelled"].to_numpy().astype(bool)
    public = df["source"].to_numpy() == "public"
    excluded_negatives = 0
    if negatives == "obvious":
        from ..store.negatives import read_image_flags

        flagged = read_image_flags(store)
        drop = eligible & (labels[:, NEGATIVE] == 1) & ~flagged
        excluded_negatives = int(drop.sum())
        eligible &= ~drop
    groups = None
    if duplicates != "ignore":
        from ..store.dedup import read_groups

        groups = read_groups(store, require_all=True)
    fold = image_folds(labels, public, eligible, n_splits, seed, groups, duplicates)
    key = image_folds_key(name)
    params = {"n_splits": n_splits, "seed": seed, "duplicates": duplicates, "negatives": negatives,
              "stratify": "19 labels + public-image column", "n_images": int(images.n)}
    with begin_stage(store, key, "fold", params) as run:
        write_image_folds(store, fold, name)
        dist = distribution(labels, fold, n_splits)
        summary = FoldSummary(
            n_images=int(images.n),
            in_folds=int((fold >= 0).sum()),
            dropped_duplicates=int((eligible & (fold < 0)).sum()),
            excluded_negatives=excluded_negatives,
            test_or_unlabelled=int((~((df["split"].to_numpy() == "train") & df["labelled"].to_numpy())).sum()),
            distribution=dist,
        )
        run.finish("done", **summary.as_dict())
    return summary


def run_cell_folds(store, *, n_splits: int = 3, seed: int = 42, name: str = "default") -> CellFoldSummary:
    """Cell folds into ``folds/cells/<name>`` (aligned with the cells table)."""
    from ..store import begin_stage
    from ..store.cells import CellTable
    from ..store.folds import cell_folds_key, write_cell_folds

    store.require_writable()
    cells = CellTable(store)
    offsets = cells.offsets()
    n_images = len(offsets) - 1
    df = store.images.df()
    split = df["split"].to_numpy()[:n_images]
    eligible = split == "train"  # test and dev images are scored, never de-noised
    if len(split) < n_images:
        eligible = np.concatenate([eligible, np.zeros(n_images - len(split), bool)])
    fold = cell_folds(offsets, eligible, n_splits, seed)
    key = cell_folds_key(name)
    params = {"n_splits": n_splits, "seed": seed, "table_id": cells.table_id}
    with begin_stage(store, key, "fold-cells", params) as run:
        write_cell_folds(store, fold, name, table_id=cells.table_id)
        per_fold = [int((fold == k).sum()) for k in range(n_splits)]
        counts = np.diff(offsets)
        summary = CellFoldSummary(n_cells=int(len(fold)), in_folds=int((fold >= 0).sum()), cells_per_fold=per_fold,
                                  single_cell_images=int(((counts == 1) & eligible).sum()))
        run.finish("done", **summary.as_dict())
    return summary
