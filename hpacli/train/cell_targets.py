"""The cell model's targets: soft pseudo-labels or de-noised Y_opt, image-label masking,
reviewed selections set to 1, and the fold's training/validation rows (see
:mod:`hpacli.train.cell`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..classes import N_CLASSES
from ..errors import HpaError, StoreError

TARGET_KINDS = ("soft", "denoised", "truth")  # truth: an analysis of synthetic data, only by name


def _check_denoise_current(store, run: str) -> dict:
    from ..store import denoise as D

    return D.check_current(store, run)  # cells table and cell folds still the ones it was made with


def read_selection(store, name: str, run: str) -> tuple[np.ndarray, np.ndarray]:
    """(cell rows int64, classes int64) of the accepted selection ``name`` of the
    de-noising run ``run`` (``hpa select-mitotic``; :mod:`hpacli.store.denoise`)."""
    from ..store import denoise as D

    _check_denoise_current(store, run)
    got = D.selection_positives(store, run, name)  # accepted, or the cells accepted in `hpa review`
    if got is None:
        raise HpaError(
            f"selection {name!r} of {run!r} is not accepted and not reviewed yet: review it with "
            f"`hpa review --run {run} --selection {name}` or import a reviewed CSV with "
            f"`hpa select-mitotic --run {run} --name {name} --accept REVIEWED.csv`"
        )
    rows, attrs = got[0], got[1]["attrs"]
    if "class" not in attrs:
        raise StoreError(f"selection {name!r} of {run!r} names no class")
    rows = np.asarray(rows, dtype=np.int64)
    return rows, np.full(len(rows), int(attrs["class"]), dtype=np.int64)


def read_denoised(store, run: str) -> np.ndarray:
    """float32 ``[C, 20]`` Y_opt of the de-noising run ``run`` (rows aligned with the cells
    table; NaN rows = not de-noised)."""
    from ..store import denoise as D

    _check_denoise_current(store, run)
    return np.asarray(D.read(store, run)["y_opt"], dtype=np.float32)


# ---------------------------------------------------------------------------- targets
@dataclass
class CellTargets:
    """Targets of every cell of the table: ``y`` float32 ``[C, 19]`` and ``has`` bool
    ``[C]`` (cells with a target); ``n_selected`` cells got 1 from the selection
    (``n_selected_skipped`` had no pseudo-label and stay out)."""

    y: np.ndarray
    has: np.ndarray
    source: str
    n_selected: int = 0
    n_selected_skipped: int = 0


def combine_targets(base: np.ndarray, has: np.ndarray, sel_rows=None, sel_classes=None,
                    image_labels: np.ndarray | None = None, mask_keep=(), image: np.ndarray | None = None,
                    ) -> CellTargets:
    """Pure part of :func:`assemble_targets`: copy ``base`` ``[C, ≥19]`` (first 19 columns,
    NaN rows where ``has`` is False); with ``image_labels`` (``[C, 19]`` multi-hot, each
    cell's image labels) zero the classes its image is not labelled with, except the
    classes in ``mask_keep`` (those the labels are known to miss keep their pseudo-label);
    with ``image`` too (``[C]``, each cell's image) rescale each labelled class inside its
    image (:func:`rescale_in_image`); then set ``y[row, class] = 1`` for the selected rows
    that have a target."""
    base = np.asarray(base, dtype=np.float32)
    if base.ndim != 2 or base.shape[1] < N_CLASSES:
        raise StoreError(f"targets must be [cells, {N_CLASSES}+], got shape {base.shape}")
    y = np.array(base[:, :N_CLASSES], dtype=np.float32, copy=True)
    has = np.asarray(has, dtype=bool) & np.isfinite(y).all(axis=1)
    y[~has] = np.nan
    if not np.all((y[has] >= 0) & (y[has] <= 1)):
        raise StoreError("targets outside 0..1: these are not probabilities")
    if image_labels is not None:
        mask = np.array(image_labels, dtype=np.float32)
        if mask.shape != y.shape:
            raise StoreError(f"image labels have shape {mask.shape}, targets {y.shape}")
        keep = np.asarray(list(mask_keep), dtype=np.int64)
        if len(keep) and (keep.min() < 0 or keep.max() >= N_CLASSES):
            raise HpaError(f"--mask-keep classes must be in 0..{N_CLASSES - 1}")
        labelled = mask > 0
        mask[:, keep] = 1.0
        y[has] *= mask[has]
        if image is not None:
            labelled[:, keep] = False  # classes the labels miss are not read through them
            rescale_in_image(y, has, np.asarray(image, dtype=np.int64), labelled)
    n_sel = skipped = 0
    if sel_rows is not None and len(sel_rows):
        rows = np.asarray(sel_rows, dtype=np.int64)
        classes = np.broadcast_to(np.asarray(sel_classes, dtype=np.int64), rows.shape)
        if rows.min() < 0 or rows.max() >= len(y):
            raise StoreError(f"selection rows outside the cells table (0..{len(y) - 1})")
        if classes.min() < 0 or classes.max() >= N_CLASSES:
            raise StoreError(f"selection classes outside 0..{N_CLASSES - 1}")
        ok = has[rows]
        y[rows[ok], classes[ok]] = 1.0
        n_sel, skipped = int(len(np.unique(rows[ok]))), int((~ok).sum())
    return CellTargets(y, has, "", n_sel, skipped)


def rescale_in_image(y: np.ndarray, has: np.ndarray, image: np.ndarray, labelled: np.ndarray) -> None:
    """Divide, in place, each (image, class) group of soft targets named by ``labelled``
    (``[C, 19]`` bool: the class is among the cell's image labels) by the group's largest
    target, so the image's most confident cell for a class it is labelled with gets 1.
    An image labelled with a class shows it in at least one cell, while the image model's
    crop predictions are calibrated on whole images and stay low on single cells; the
    ranking of the image's cells is kept. Groups whose largest target is 0 stay 0."""
    if len(image) != len(y):
        raise StoreError(f"{len(image)} cell images for {len(y)} targets")
    rows, cols = np.nonzero(labelled & np.asarray(has, dtype=bool)[:, None])
    if not len(rows):
        return
    top = np.zeros((int(image.max()) + 1, y.shape[1]), dtype=np.float32)
    np.maximum.at(top, (image[rows], cols), y[rows, cols])
    t = top[image[rows], cols]
    ok = t > 1e-6
    y[rows[ok], cols[ok]] = np.minimum(y[rows[ok], cols[ok]] / t[ok], 1.0)


def assemble_targets(
    store, labels_run: str, selection: str | None = None, targets: str = "soft", denoise_run: str | None = None,
    mask_labels: bool = False, mask_keep=(), rescale: bool = False,
) -> CellTargets:
    """The cell targets of the store: see :func:`combine_targets`. ``mask_labels`` keeps
    only the classes of each cell's image labels (weak labels miss classes but rarely add
    wrong ones, so this removes the image model's false positives from the targets), except
    the classes of ``mask_keep``: classes the labels are known to miss (the mitotic spindle,
    shown by few cells and seldom labelled) keep their pseudo-label everywhere. ``rescale``
    (with ``mask_labels``) divides each labelled class's targets by their maximum over the
    image's cells (:func:`rescale_in_image`)."""
    from ..store import pseudolabels as PL

    if targets not in TARGET_KINDS:
        raise HpaError(f"--targets must be one of {', '.join(TARGET_KINDS)}, not {targets!r}")
    if mask_keep and not mask_labels:
        raise HpaError("--mask-keep names classes to leave unmasked: it needs --mask-labels")
    if targets == "truth" and (selection or mask_labels):
        raise HpaError("--targets truth takes neither --selection nor --mask-labels (the truth needs no help)")
    if rescale and not mask_labels:
        raise HpaError("--rescale-in-image rescales the classes of each image's labels: it needs --mask-labels")
    PL.check_current(store, labels_run)
    if targets == "truth":
        return truth_targets(store, PL.labelled_mask(store, labels_run))
    if targets == "soft":
        base = PL.read_probs(store, labels_run)
        has = PL.labelled_mask(store, labels_run)
    else:
        base = read_denoised(store, denoise_run or labels_run)
        n = PL.labelled_mask(store, labels_run).shape[0]
        if base.shape[0] != n:
            raise StoreError(f"Y_opt has {base.shape[0]} rows but the cells table {n}; de-noise again")
        has = np.isfinite(base[:, :N_CLASSES]).all(axis=1) if base.ndim == 2 else np.zeros(0, bool)
    rows = classes = None
    if selection:
        rows, classes = read_selection(store, selection, denoise_run or labels_run)
    image_labels = image = None
    if mask_labels:
        from ..store.cells import CellTable

        image = CellTable(store).column("image").astype(np.int64)
        image_labels = store.images.labels()[image]
    out = combine_targets(base, has, rows, classes, image_labels, mask_keep,
                          image if rescale else None)
    kept = f" (but {', '.join(map(str, mask_keep))})" if mask_labels and len(mask_keep) else ""
    out.source = (f"{targets} targets of {labels_run!r}" + (f" masked by image labels{kept}" if mask_labels else "")
                  + (", rescaled to 1 per labelled image" if rescale else "")
                  + (f" + selection {selection!r}" if selection else ""))
    return out


def truth_targets(store, labelled: np.ndarray) -> CellTargets:
    """Targets from the cell truth of the store's training images (synthetic data only): each
    pseudo-labelled cell matched to a true cell (IoU ≥ 0.5) gets that cell's classes, 0/1;
    unmatched cells stay out. An upper bound for the analysis, never a real-data rule."""
    from ..evaluate.celltruth import cell_truth
    from ..store.truth import read_has

    if not read_has(store).any():
        raise HpaError("--targets truth needs cell-level truth in the store (a dataset made by `hpa synth`)")
    truth, matched = cell_truth(store)
    has = np.asarray(labelled, dtype=bool) & matched
    y = truth.astype(np.float32)
    y[~has] = np.nan
    return CellTargets(y, has, "true cell classes (analysis upper bound)")


def cell_fold_rows(store, fold: int, has: np.ndarray, folds_name: str = "default") -> tuple[np.ndarray, np.ndarray]:
    """Training and validation rows of the cells table for ``fold`` (cells follow their
    image's fold; only cells with a target)."""
    from ..store.cells import CellTable
    from ..store.folds import read_image_folds

    cells = CellTable(store)
    image = cells.column("image").astype(np.int64)
    folds = read_image_folds(store, folds_name)
    k = int(folds.max()) + 1 if (folds >= 0).any() else 0
    if k == 0 or not 0 <= fold < k:
        raise HpaError(f"--fold {fold} is out of range: the store's folds are 0..{k - 1}")
    cf = folds[image] if len(image) else np.zeros(0, np.int8)
    has = np.asarray(has, dtype=bool)
    if len(has) != len(cf):
        raise StoreError(f"targets have {len(has)} rows but the cells table {len(cf)}")
    train = has & (cf >= 0) & (cf != fold)
    val = has & (cf == fold)
    return np.flatnonzero(train), np.flatnonzero(val)


