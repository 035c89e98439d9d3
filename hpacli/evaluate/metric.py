"""The competition metric: Open Images instance-segmentation challenge style mAP.

Rules (``../shared/seed/solution-facts.md``, "The metric"):

1. Per image only *evaluatable* classes count: the classes present in that image's truth.
   Detections of other classes in that image, and all detections in images without a
   truth row, are dropped.
2. Predicted masks that are empty are dropped (when the submission is parsed).
3. Per image and class, detections are sorted by score (descending) and matched greedily:
   each detection is compared with the truth instance of that class with the highest
   IoU (ties in IoU: the instance that comes first in the truth). It is a true positive
   iff that IoU >= ``threshold`` and that instance is not yet taken by an earlier true
   positive; otherwise a false positive (no fall-back to the second-best instance).
4. Per class, the detections of all images are pooled and sorted by score; precision is
   made monotone (VOC: each precision replaced by the highest precision at any higher
   recall) and AP = sum(delta recall * precision), recall = TP / number of truth instances.
5. A class with no truth instance anywhere has AP NaN and is left out of the mean; a
   class with truth but no detections has AP 0. mAP = mean over the other classes.

IoU: ``"mask"`` (pixel IoU of the masks) or ``"box"`` (IoU of the masks' bounding boxes,
normalised as the evaluator does: ymin = r0/H, xmin = c0/W, ymax = (r1+1)/H,
xmax = (c1+1)/W, computed in those floating-point units).

Ties in score. The Open Images evaluator ranks detections one by one: it sorts each
image's detections (numpy ``argsort`` of the scores, reversed) before matching, and sorts the
pooled detections of a class the same way before the precision/recall curve, so every tied
detection gets its own precision point, in whatever order that unstable sort leaves them.
The order can change the score; we fix it:

* ``ties="submission"`` (default): tied detections are ranked one by one in submission
  order: images in the order of the file (first row first; for label images the order of
  the ``preds`` mapping), and inside an image the triples in PredictionString order (for
  label images: cells in mapping order, then classes). The same order decides the greedy
  matching inside an image and the ranking of the pooled detections, so the result is
  the evaluator's score for that order of the ties. ``"first"`` is the older name.
* ``ties="group"``: detections with the same score form one threshold; the
  precision/recall point is taken only after the whole group, so the result does not
  depend on the order of images or triples in the file (inside one image the matching
  still goes in triple order). This equals the evaluator's score for the order that puts
  the tied false positives before the tied true positives (the lowest it can give).

Without ties both give the same AP.

The IoU of an image is computed once for all pairs of distinct masks: pycocotools' RLE
IoU for masks from CSV files (no decoding to pixels), a joint ``bincount`` of the two label
images for label-image instances, and array arithmetic on bounding boxes for ``"box"``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..classes import CLASS_NAMES, N_CLASSES
from ..errors import InputError
from .submission import (
    MAX_PROBLEMS,
    ImageInstances,
    Problems,
    parse_frame,
    raise_problems,
    read_frame,
)

IOU_MODES = ("mask", "box")
TIE_MODES = ("submission", "group", "first")  # "first": the older name of "submission"


@dataclass
class EvalResult:
    """mAP and per-class results. ``per_class_ap[c]`` is NaN for a class without truth."""

    mAP: float
    per_class_ap: dict[int, float]
    n_truth: dict[int, int]
    n_det: dict[int, int]  # detections evaluated (after dropping non-evaluatable ones)
    n_tp: dict[int, int]
    iou: str = "mask"
    threshold: float = 0.6
    ties: str = "submission"
    n_images_truth: int = 0
    n_images_pred: int = 0
    n_images_without_truth: int = 0  # predicted images with no truth row (detections dropped)
    n_images_without_pred: int = 0  # truth images with no prediction row
    n_dropped: int = 0  # detections of classes not in their image's truth
    n_empty: int = 0  # detections with empty masks
    class_names: tuple[str, ...] = field(default=CLASS_NAMES, repr=False)

    def to_json_dict(self) -> dict:
        """``{"mAP": .., "per_class_AP": {"0": .., ..., "18": ..}}`` with NaN as None."""
        return {
            "mAP": _nan_to_none(self.mAP),
            "per_class_AP": {str(c): _nan_to_none(v) for c, v in sorted(self.per_class_ap.items())},
        }


def _nan_to_none(x: float) -> float | None:
    return None if x is None or math.isnan(x) else float(x)


# --------------------------------------------------------------------------- IoU


def _label_lut(label_image: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """label_image with id ids[k] -> k + 1, every other pixel -> 0."""
    top = int(max(label_image.max(initial=0), ids.max(initial=0))) + 1
    lut = np.zeros(top, dtype=np.int64)
    lut[ids] = np.arange(1, len(ids) + 1)
    return lut[label_image]


def _label_mask_iou(a: ImageInstances, b: ImageInstances) -> np.ndarray:
    """Mask IoU of two label images' cells from one joint histogram of their ids."""
    top_a = int(max(a.label_image.max(initial=0), a.label_ids.max(initial=0))) + 1
    top_b = int(max(b.label_image.max(initial=0), b.label_ids.max(initial=0))) + 1
    if top_a * top_b <= (1 << 22):  # small ids: histogram of the raw id pairs
        joint = np.bincount(
            (a.label_image.astype(np.int64) * top_b + b.label_image).ravel(), minlength=top_a * top_b
        ).reshape(top_a, top_b)
        area_a = joint.sum(1)[a.label_ids]
        area_b = joint.sum(0)[b.label_ids]
        inter = joint[np.ix_(a.label_ids, b.label_ids)]
    else:  # large ids: map the cells of interest to 1..K first
        ka, kb = len(a.label_ids), len(b.label_ids)
        ja = _label_lut(a.label_image, a.label_ids)
        jb = _label_lut(b.label_image, b.label_ids)
        joint = np.bincount((ja * (kb + 1) + jb).ravel(), minlength=(ka + 1) * (kb + 1)).reshape(ka + 1, kb + 1)
        inter = joint[1:, 1:]
        area_a = joint[1:, :].sum(1)
        area_b = joint[:, 1:].sum(0)
    inter = inter.astype(np.float64)
    union = area_a[:, None].astype(np.float64) + area_b[None, :] - inter
    return inter / np.maximum(union, 1e-12)


def _to_rles(inst: ImageInstances) -> list[dict]:
    if inst.rles is not None:
        return inst.rles
    from pycocotools import mask as mask_util

    out: list[dict] = []
    chunk = 16
    for s in range(0, len(inst.label_ids), chunk):
        ids = inst.label_ids[s : s + chunk]
        stack = np.asfortranarray((inst.label_image[:, :, None] == ids[None, None, :]).astype(np.uint8))
        out += mask_util.encode(stack)
    return out


def _boxes(inst: ImageInstances) -> np.ndarray:
    """Normalised boxes [ymin, xmin, ymax, xmax] of the masks (n_masks x 4)."""
    h, w = inst.height, inst.width
    if inst.rles is not None:
        from pycocotools import mask as mask_util

        if not inst.rles:
            return np.zeros((0, 4))
        xywh = mask_util.toBbox(inst.rles).astype(np.float64).reshape(-1, 4)
        r0, c0 = xywh[:, 1], xywh[:, 0]
        r1p, c1p = xywh[:, 1] + xywh[:, 3], xywh[:, 0] + xywh[:, 2]
    else:
        from scipy.ndimage import find_objects

        slices = find_objects(inst.label_image, max_label=int(inst.label_ids.max(initial=0)))
        rows = np.array([[s[0].start, s[1].start, s[0].stop, s[1].stop] for s in (slices[i - 1] for i in inst.label_ids)],
                        dtype=np.float64).reshape(-1, 4)
        r0, c0, r1p, c1p = rows.T
    return np.stack([r0 / h, c0 / w, r1p / h, c1p / w], axis=1)


def _box_iou(b1: np.ndarray, b2: np.ndarray) -> np.ndarray:
    ymin1, xmin1, ymax1, xmax1 = (b1[:, i : i + 1] for i in range(4))
    ymin2, xmin2, ymax2, xmax2 = (b2[:, i][None, :] for i in range(4))
    ih = np.maximum(0.0, np.minimum(ymax1, ymax2) - np.maximum(ymin1, ymin2))
    iw = np.maximum(0.0, np.minimum(xmax1, xmax2) - np.maximum(xmin1, xmin2))
    inter = ih * iw
    area1 = (ymax1 - ymin1) * (xmax1 - xmin1)
    area2 = (ymax2 - ymin2) * (xmax2 - xmin2)
    union = area1 + area2 - inter
    return inter / np.maximum(union, 1e-300)


def pairwise_iou(pred: ImageInstances, truth: ImageInstances, iou: str = "mask") -> np.ndarray:
    """IoU of every distinct mask of ``pred`` with every distinct mask of ``truth``
    (``pred.n_masks x truth.n_masks``)."""
    if (pred.height, pred.width) != (truth.height, truth.width):
        raise InputError(
            f"{pred.image_id}: the prediction is {pred.width}x{pred.height} but the truth "
            f"{truth.width}x{truth.height} (ImageWidth x ImageHeight)"
        )
    if pred.n_masks == 0 or truth.n_masks == 0:
        return np.zeros((pred.n_masks, truth.n_masks))
    if iou == "box":
        return _box_iou(_boxes(pred), _boxes(truth))
    if iou != "mask":
        raise ValueError(f"iou must be one of {IOU_MODES}, not {iou!r}")
    if pred.label_image is not None and truth.label_image is not None:
        return _label_mask_iou(pred, truth)
    from pycocotools import mask as mask_util

    out = mask_util.iou(_to_rles(pred), _to_rles(truth), [0] * truth.n_masks)
    return np.asarray(out, dtype=np.float64).reshape(pred.n_masks, truth.n_masks)


# --------------------------------------------------------------------------- matching and AP


def match_image(
    pred: ImageInstances, truth: ImageInstances, iou: str = "mask", threshold: float = 0.6,
    ious: np.ndarray | None = None,
) -> tuple[dict[int, tuple[np.ndarray, np.ndarray]], int]:
    """Greedy matching in one image: ``({class: (scores, is_tp) in matching order}, n_dropped)``.

    Only classes in the image's truth are evaluated; detections of other classes are
    dropped and counted. ``ious``: the image's :func:`pairwise_iou`, when already known."""
    classes = np.unique(truth.labels)
    keep = np.isin(pred.labels, classes)
    n_dropped = int(len(pred.labels) - keep.sum())
    out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    if not keep.any():
        return out, n_dropped
    if ious is None:
        ious = pairwise_iou(pred, truth, iou)
    for c in np.unique(pred.labels[keep]):
        det = np.flatnonzero(pred.labels == c)
        det = det[np.argsort(-pred.scores[det], kind="stable")]
        gt_masks = truth.mask_index[truth.labels == c]
        sub = ious[np.ix_(pred.mask_index[det], gt_masks)]
        best = sub.argmax(axis=1)  # first maximum: the earliest truth instance on ties
        valid = sub[np.arange(len(det)), best] >= threshold
        tp = np.zeros(len(det), dtype=bool)
        vi = np.flatnonzero(valid)
        # an instance goes to the first valid detection that picks it; later ones are FPs
        _, first = np.unique(best[vi], return_index=True)
        tp[vi[first]] = True
        out[int(c)] = (pred.scores[det], tp)
    return out, n_dropped


def average_precision(scores: np.ndarray, tp: np.ndarray, n_truth: int, ties: str = "submission") -> float:
    """VOC-style AP of pooled detections (``scores``, ``tp`` in tie order: a stable sort by
    descending score keeps tied detections in the order given). NaN without truth."""
    if n_truth == 0:
        return float("nan")
    if len(scores) == 0:
        return 0.0
    if ties not in TIE_MODES:
        raise ValueError(f"ties must be one of {TIE_MODES}, not {ties!r}")
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    s = np.asarray(scores, dtype=np.float64)[order]
    t = np.asarray(tp, dtype=bool)[order]
    ctp = np.cumsum(t)
    cfp = np.cumsum(~t)
    if ties == "group":
        last = np.append(s[1:] != s[:-1], True)
        ctp, cfp = ctp[last], cfp[last]
    precision = ctp / (ctp + cfp)
    recall = ctp / n_truth
    precision = np.concatenate(([0.0], precision, [0.0]))
    recall = np.concatenate(([0.0], recall, [1.0]))
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    idx = np.flatnonzero(recall[1:] != recall[:-1]) + 1
    return float(np.sum((recall[idx] - recall[idx - 1]) * precision[idx]))


def evaluate(
    truth: Mapping[str, ImageInstances],
    preds: Mapping[str, ImageInstances],
    iou: str = "mask",
    threshold: float = 0.6,
    ties: str = "submission",
    progress=None,
    ious: Mapping[str, np.ndarray] | None = None,
) -> EvalResult:
    """The metric on parsed instances (see the module docstring for the rules). ``ious``:
    per image id, its :func:`pairwise_iou` when already known (scoring other scores for the
    same masks)."""
    if iou not in IOU_MODES:
        raise InputError(f"--iou must be one of {', '.join(IOU_MODES)}, not {iou!r}")
    if ties not in TIE_MODES:
        raise InputError(f"ties must be one of {', '.join(TIE_MODES)}, not {ties!r}")
    if not 0.0 <= float(threshold) <= 1.0:
        raise InputError(f"the IoU threshold must be in 0..1, not {threshold}")
    n_truth = np.zeros(N_CLASSES, dtype=np.int64)
    for t in truth.values():
        n_truth += np.bincount(t.labels, minlength=N_CLASSES)[:N_CLASSES]
    pooled_s: list[list[np.ndarray]] = [[] for _ in range(N_CLASSES)]
    pooled_t: list[list[np.ndarray]] = [[] for _ in range(N_CLASSES)]
    n_dropped = n_empty = n_without = 0
    task = progress.add_task("evaluate", total=len(preds), unit="img", info="") if progress is not None else None
    for image_id, p in preds.items():
        n_empty += p.n_empty
        t = truth.get(image_id)
        if t is None:
            n_without += 1
            n_dropped += len(p)
        else:
            per_class, dropped = match_image(p, t, iou, threshold, None if ious is None else ious.get(image_id))
            n_dropped += dropped
            for c, (s, tp) in per_class.items():
                pooled_s[c].append(s)
                pooled_t[c].append(tp)
        if task is not None:
            progress.advance(task)
    per_class_ap, n_det, n_tp = {}, {}, {}
    for c in range(N_CLASSES):
        s = np.concatenate(pooled_s[c]) if pooled_s[c] else np.zeros(0)
        tp = np.concatenate(pooled_t[c]) if pooled_t[c] else np.zeros(0, dtype=bool)
        per_class_ap[c] = average_precision(s, tp, int(n_truth[c]), ties)
        n_det[c] = len(s)
        n_tp[c] = int(tp.sum())
    values = [v for v in per_class_ap.values() if not math.isnan(v)]
    return EvalResult(
        mAP=float(np.mean(values)) if values else float("nan"),
        per_class_ap=per_class_ap,
        n_truth={c: int(n_truth[c]) for c in range(N_CLASSES)},
        n_det=n_det,
        n_tp=n_tp,
        iou=iou,
        threshold=float(threshold),
        ties=ties,
        n_images_truth=len(truth),
        n_images_pred=len(preds),
        n_images_without_truth=n_without,
        n_images_without_pred=sum(1 for k in truth if k not in preds),
        n_dropped=n_dropped,
        n_empty=n_empty,
    )


def score_bounds(
    truth: Mapping[str, ImageInstances],
    preds: Mapping[str, ImageInstances],
    iou: str = "mask",
    threshold: float = 0.6,
    draws: int = 3,
    seed: int = 0,
) -> dict[str, float]:
    """What the metric can give for the cells of a submission, whatever its scores: the same
    masks and (mask, class) triples rescored two ways.

    ``ceiling``: a triple scores 1 when the truth instance of its class that its mask
    overlaps most has IoU >= ``threshold`` (the match :func:`match_image` looks for), else 0:
    a perfect classifier of these cells; what it misses is the segmentation's. ``floor``: the
    mean mAP of ``draws`` sets of uniform random scores (seeded). A submission's place between the two is its
    classifier's; the same pairwise IoUs serve every rescoring."""
    from dataclasses import replace

    ious = {k: pairwise_iou(p, truth[k], iou) for k, p in preds.items() if k in truth}
    perfect = {}
    for k, p in preds.items():
        t, s = truth.get(k), np.zeros(len(p.labels))
        if t is not None and len(p.labels) and t.n_masks:
            shows = np.zeros((p.n_masks, N_CLASSES), dtype=bool)  # mask x class: a match of that class
            for c in np.unique(t.labels):
                shows[:, c] = ious[k][:, np.unique(t.mask_index[t.labels == c])].max(axis=1) >= threshold
            s = shows[p.mask_index, p.labels].astype(np.float64)
        perfect[k] = replace(p, scores=s)
    rng = np.random.default_rng(seed)
    floor = [evaluate(truth, {k: replace(p, scores=rng.random(len(p.labels))) for k, p in preds.items()},
                      iou, threshold, ious=ious).mAP for _ in range(max(1, int(draws)))]
    return {"floor": float(np.mean(floor)), "ceiling": evaluate(truth, perfect, iou, threshold, ious=ious).mAP}


def bounds_files(truth_path: str | Path, submission_path: str | Path, iou: str = "mask",
                 threshold: float = 0.6) -> dict[str, float]:
    """:func:`score_bounds` of a submission file against a truth file."""
    truth, sub = _read_files(truth_path, submission_path, MAX_PROBLEMS)
    return score_bounds(truth, sub, iou, threshold)


# --------------------------------------------------------------------------- entry points


def evaluate_frames(
    truth_df,
    sub_df,
    iou: str = "mask",
    threshold: float = 0.6,
    ties: str = "submission",
    max_problems: int = MAX_PROBLEMS,
    progress=None,
) -> EvalResult:
    """The metric on two DataFrames with columns ID, ImageWidth, ImageHeight,
    PredictionString (truth: confidence 1 per (cell, label)). Raises InputError listing up
    to ``max_problems`` problems of each frame, with their lines."""
    truth = parse_frame(truth_df, kind="truth", max_problems=max_problems)
    sub = parse_frame(sub_df, kind="submission", max_problems=max_problems)
    _raise_both(truth.problems, sub.problems, "truth", "submission")
    _check_sizes(truth.images, sub.images, max_problems)
    return evaluate(truth.images, sub.images, iou=iou, threshold=threshold, ties=ties, progress=progress)


def evaluate_files(
    truth_path: str | Path,
    submission_path: str | Path,
    iou: str = "mask",
    threshold: float = 0.6,
    ties: str = "submission",
    max_problems: int = MAX_PROBLEMS,
    progress=None,
) -> EvalResult:
    """:func:`evaluate_frames` on two CSV files (InputError for a missing file or bad header)."""
    truth, sub = _read_files(truth_path, submission_path, max_problems)
    return evaluate(truth, sub, iou=iou, threshold=threshold, ties=ties, progress=progress)


def _read_files(truth_path, submission_path, max_problems: int):
    """Parsed (truth, submission) instances of two CSV files, every problem of both raised
    as one InputError."""
    truth = parse_frame(read_frame(truth_path), kind="truth", max_problems=max_problems)
    sub = parse_frame(read_frame(submission_path), kind="submission", max_problems=max_problems)
    _raise_both(truth.problems, sub.problems, f"truth file {truth_path}", f"submission file {submission_path}")
    _check_sizes(truth.images, sub.images, max_problems)
    return truth.images, sub.images


def evaluate_instances(
    truth: Mapping[str, tuple[np.ndarray, Mapping[int, Iterable[int]]]],
    preds: Mapping[str, tuple[np.ndarray, Mapping[int, Iterable[float]]]],
    iou: str = "mask",
    threshold: float = 0.6,
    ties: str = "submission",
    progress=None,
) -> EvalResult:
    """The metric on label images, without encoding anything.

    ``truth``: ``{image id: (label_image, {cell id: classes})}``;
    ``preds``: ``{image id: (label_image, {cell id: 19 scores})}`` (each cell is a
    detection of every class with that class's score). The two label images of an image
    may differ (predicted vs true segmentation) but must have the same shape.
    """
    t = {k: ImageInstances.from_label_truth(k, lab, cells) for k, (lab, cells) in truth.items()}
    p = {k: ImageInstances.from_label_scores(k, lab, cells) for k, (lab, cells) in preds.items()}
    _check_sizes(t, p, MAX_PROBLEMS)
    return evaluate(t, p, iou=iou, threshold=threshold, ties=ties, progress=progress)


def _raise_both(a: Problems, b: Problems, name_a: str, name_b: str) -> None:
    if a and b:
        raise InputError(a.text(name_a) + "\n" + b.text(name_b))
    raise_problems(a, name_a)
    raise_problems(b, name_b)


def _check_sizes(truth: Mapping[str, ImageInstances], preds: Mapping[str, ImageInstances], limit: int) -> None:
    problems = Problems(limit)
    for k, p in preds.items():
        t = truth.get(k)
        if t is not None and (t.height, t.width) != (p.height, p.width):
            problems.add(
                p.line, k,
                f"image size {p.width}x{p.height} differs from the truth's {t.width}x{t.height}"
                + (f" (truth line {t.line})" if t.line else ""),
            )
    raise_problems(problems, "submission vs truth")
