"""Validation metrics of the trainers: macro average precision, the image model's default
set, and the cell model's (soft-label bins, the competition's cell-level mAP)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch


def average_precision(scores: np.ndarray, truth: np.ndarray) -> float:
    """Average precision of one class: Σ (R_n − R_{n−1}) P_n over distinct score thresholds
    (tied scores enter together); NaN when there is no positive."""
    scores = np.asarray(scores, dtype=np.float64)
    truth = np.asarray(truth) > 0.5
    n_pos = int(truth.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    s, t = scores[order], truth[order]
    tp = np.cumsum(t)
    last_of_tie = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]
    tp_at = tp[last_of_tie]
    precision = tp_at / (last_of_tie + 1)
    recall = tp_at / n_pos
    d_recall = np.diff(np.r_[0.0, recall])
    return float(np.sum(d_recall * precision))


def macro_map(logits: np.ndarray, targets: np.ndarray) -> float:
    aps = [average_precision(logits[:, c], targets[:, c]) for c in range(targets.shape[1])]
    aps = [a for a in aps if not math.isnan(a)]
    return float(np.mean(aps)) if aps else float("nan")


def default_metrics(loss_name: str = "focal") -> Callable[[np.ndarray, np.ndarray], dict]:
    """Validation metrics of the image model: ``val_loss`` (focal by default) and macro ``map``."""
    from ..registry import create_loss

    loss_fn = create_loss(loss_name)

    def metrics(logits: np.ndarray, targets: np.ndarray) -> dict:
        with torch.no_grad():
            loss = float(loss_fn(torch.from_numpy(logits), torch.from_numpy(targets)))
        return {"val_loss": loss, "map": macro_map(logits, targets)}

    return metrics


# ---------------------------------------------------------------------------- cell model
BIN_WIDTH = 0.05


def bin_accuracy(probs: np.ndarray, targets: np.ndarray, width: float = BIN_WIDTH) -> float:
    """Fraction of (cell, class) entries whose prediction falls in the 0.05-wide bin of its
    soft label (bins [0, .05), [.05, .1), ..., [.95, 1]; 1.0 is in the last bin)."""
    n_bins = int(round(1.0 / width))
    p = np.clip(np.floor(np.asarray(probs, np.float64) / width + 1e-9), 0, n_bins - 1)
    t = np.clip(np.floor(np.asarray(targets, np.float64) / width + 1e-9), 0, n_bins - 1)
    return float(np.mean(p == t)) if p.size else float("nan")


def _predicted_labels(store, img: int) -> np.ndarray:
    """The segmentation's cells label image of ``img`` at original resolution."""
    from ..data import crops as C

    meta_h = int(store.images.df()["height"].iat[img])
    meta_w = int(store.images.df()["width"].iat[img])
    return C.resize_nearest(np.asarray(C.read_cell_labels(store, img)), (meta_h, meta_w))


class CellMapScorer:
    """Cell-level mAP of validation cells against the store's cell truth (``hpa evaluate``'s
    code): each validation cell of an image with truth is a detection of every class with
    the model's probability, masked by the segmentation. Label images are read once.
    ``max_images`` bounds memory (the first images with truth, in table order)."""

    def __init__(self, store, rows: np.ndarray, max_images: int = 500, log=None) -> None:
        from ..store.cells import CellTable
        from ..store.truth import TruthReader

        self.available = False
        cells = CellTable(store)
        image = cells.column("image")[rows]
        reader = TruthReader(store)
        imgs = [int(i) for i in np.unique(image) if reader.has[int(i)]]
        if not imgs:
            return
        if len(imgs) > max_images:
            if log:
                log(f"cell-level mAP on the first {max_images} of {len(imgs)} validation images with truth")
            imgs = imgs[:max_images]
        ids = store.images.ids()
        cell_id = cells.column("cell_id")[rows]
        self.truth, self.pred_labels, self.members = {}, {}, {}
        for img in imgs:
            key = str(ids[img])
            self.truth[key] = reader.label_images(img)
            self.pred_labels[key] = _predicted_labels(store, img)
            pos = np.flatnonzero(image == img)
            self.members[key] = (pos, cell_id[pos])
        self.available = True

    def __call__(self, probs: np.ndarray) -> float:
        from ..evaluate.metric import evaluate_instances

        preds = {
            key: (self.pred_labels[key], {int(c): probs[p] for p, c in zip(pos, cid)})
            for key, (pos, cid) in self.members.items()
        }
        return float(evaluate_instances(self.truth, preds).mAP)


def cell_metrics(loss_name: str = "soft-focal", scorer: CellMapScorer | None = None):
    """``metrics(logits, targets) -> dict``: ``val_loss`` (``loss_name`` on the soft
    targets), ``bin_acc``, ``map`` (macro AP against targets ≥ 0.5) and ``cell_map`` when
    ``scorer`` has truth."""
    from ..registry import create_loss

    loss_fn = create_loss(loss_name)

    def metrics(logits: np.ndarray, targets: np.ndarray) -> dict:
        with torch.no_grad():
            loss = float(loss_fn(torch.from_numpy(logits), torch.from_numpy(targets)))
        probs = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
        out = {"val_loss": loss, "bin_acc": bin_accuracy(probs, targets), "map": macro_map(logits, targets)}
        if scorer is not None and scorer.available:
            out["cell_map"] = scorer(probs.astype(np.float32))
        return out

    return metrics


