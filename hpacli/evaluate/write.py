"""``hpa submit --out``: the Kaggle submission from stored per-cell predictions.

Per image of the split: the cells label image nearest-upsampled to the image's original
size (:func:`hpacli.store.segmentation.read_labels_full`), every cell's mask encoded in
one pass (:func:`encode_label_runs`: the same bytes as
:func:`hpacli.io.masks.encode_label_image`, about 7x faster on 2048² images,
because the runs of all cells come from one scan of the label image instead of one
H x W mask per cell), one triple per class whose probability is >= ``min_conf``
(classes limited to ``classes``). Images go to a pool of
processes; rows are written in the images table's order to a temporary file next to
``out``, checked with the checker of ``hpa submit --check`` (and against the expected
IDs and sizes), and only then moved into place (``os.replace``), so ``out`` is never a
half-written or invalid file.
"""

from __future__ import annotations

import csv
import os
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np

from ..classes import N_CLASSES
from ..errors import HpaError, InputError
from ..summary import Summary

_STORE = None  # per worker process


@dataclass
class WriteSummary(Summary):
    out: str
    images: int = 0
    images_without_cells: int = 0
    cells: int = 0
    triples: int = 0
    seconds: float = 0.0
    bytes: int = 0
    classes: list[int] = field(default_factory=list)


def parse_classes(text: str | None) -> list[int] | None:
    """``"0,1,5"`` → [0, 1, 5]; None/empty → None (all classes)."""
    if text is None or str(text).strip() == "":
        return None
    out = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            c = int(part)
        except ValueError:
            raise InputError(f"--classes: {part!r} is not a class number (0..{N_CLASSES - 1})") from None
        if not 0 <= c < N_CLASSES:
            raise InputError(f"--classes: {c} is outside 0..{N_CLASSES - 1}")
        out.append(c)
    if not out:
        raise InputError("--classes is empty")
    return sorted(set(out))


def encode_label_runs(labels: np.ndarray, ids=None) -> dict[int, str]:
    """``{cell id: encoded mask}`` for the cells of a label image, byte-identical to
    :func:`hpacli.io.masks.encode_label_image`: one column-major scan finds the
    runs of every id, pycocotools compresses each cell's run lengths."""
    from pycocotools import mask as mask_util

    from ..io.masks import _pack

    labels = np.asarray(labels)
    h, w = labels.shape
    flat = labels.ravel(order="F")
    n = flat.size
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate(([0], change))
    ends = np.concatenate((change, [n]))
    values = flat[starts]
    if ids is None:
        ids = np.unique(values)
        ids = ids[ids != 0]
    if len(ids) == 0:
        return {}
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    objs = []
    for k in ids:
        sel = order[np.searchsorted(sorted_values, k):np.searchsorted(sorted_values, k, side="right")]
        s, e = starts[sel], ends[sel]
        if len(s) == 0:
            counts = np.array([n], np.int64)
        else:  # alternating runs, starting with the zeros before the first pixel
            counts = np.empty(2 * len(s) + 1, np.int64)
            counts[0] = s[0]
            counts[1::2] = e - s
            counts[2:-1:2] = s[1:] - e[:-1]
            counts[-1] = n - e[-1]
            if counts[-1] == 0:
                counts = counts[:-1]
        objs.append({"size": [h, w], "counts": counts.tolist()})
    rles = mask_util.frPyObjects(objs, h, w)
    return {int(k): _pack(r["counts"]) for k, r in zip(ids, rles)}


def image_row(image_id: str, labels: np.ndarray, cell_ids, probs: np.ndarray, classes=None,
              min_conf: float = 0.0) -> tuple[str, int, int, str, int]:
    """(ID, width, height, PredictionString, n_triples) of one image: per cell (in the
    given order) one triple per class in ``classes`` with probability >= ``min_conf``."""
    from .submission import format_prediction_string

    h, w = labels.shape
    cls = np.arange(N_CLASSES) if classes is None else np.asarray(classes, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    keep = probs[:, cls] >= min_conf
    used = keep.any(axis=1)
    encoded = encode_label_runs(labels, np.asarray(cell_ids)[used]) if used.any() else {}
    cell_k, class_k = np.nonzero(keep)  # row-major: cell by cell, classes in order
    ids = np.asarray(cell_ids)
    masks = [encoded[int(ids[k])] for k in cell_k]
    text = format_prediction_string(cls[class_k], probs[cell_k, cls[class_k]], masks)
    return image_id, w, h, text, len(masks)


def _init_worker(store_path: str) -> None:
    global _STORE
    from ..store import open_store

    _STORE = open_store(store_path, "r")


def _row(job) -> tuple[str, int, int, str, int]:
    """One image's row: (ID, width, height, PredictionString, n_triples)."""
    from ..store.segmentation import read_labels_full

    index, image_id, width, height, cell_ids, probs, classes, min_conf = job
    if len(cell_ids) == 0:
        return image_id, width, height, "", 0
    _, labels = read_labels_full(_STORE, index)
    if labels.shape != (height, width):
        raise HpaError(f"image {image_id}: label image {labels.shape} differs from the image size {height}x{width}")
    return image_row(image_id, labels, cell_ids, probs, classes, min_conf)


def _jobs(store, predictions: str, split: str, classes, min_conf: float):
    from ..store import predictions as P
    from ..store import segmentation as seg
    from ..store.cells import CellTable

    P.check_current(store, predictions)
    probs = P.read_probs(store, predictions)
    cells = CellTable(store)
    df = store.images.df()
    if split == "all":
        images = np.arange(len(df))
    else:
        images = np.flatnonzero(df["split"].to_numpy().astype(str) == split)
    if len(images) == 0:
        raise HpaError(f"the store has no {split} images to submit")
    counts = seg.n_cells(store)
    not_seg = [str(df["ID"].iat[i]) for i in images if counts[i] == seg.NOT_DONE]
    if not_seg:
        raise HpaError(f"{len(not_seg)} {split} image(s) are not segmented (e.g. {not_seg[:3]}); run `hpa predict` first")
    cell_id = cells.column("cell_id")
    offsets = cells.offsets()
    jobs, missing_cells, missing_images = [], 0, []
    for i in images:
        a, b = int(offsets[i]), int(offsets[i + 1])
        p = probs[a:b]
        bad = ~np.isfinite(p).all(axis=1)
        if bad.any():
            missing_cells += int(bad.sum())
            missing_images.append(str(df["ID"].iat[i]))
            continue
        jobs.append((int(i), str(df["ID"].iat[i]), int(df["width"].iat[i]), int(df["height"].iat[i]),
                     cell_id[a:b].copy(), p.copy(), classes, float(min_conf)))
    if missing_images:
        raise HpaError(
            f"{missing_cells} cell(s) of {len(missing_images)} {split} image(s) have no predictions {predictions!r} "
            f"(e.g. {missing_images[:3]}); run `hpa predict --name {predictions}` (every shard) first"
        )
    return jobs


def write_submission(store, predictions: str = "default", out="submission.csv", min_conf: float = 0.0,
                     classes=None, split: str = "test", workers: int = 2, progress=None) -> WriteSummary:
    """Write the submission CSV for the ``split`` images from ``predictions/<predictions>``;
    see the module doc. Raises HpaError when predictions are missing or the written file
    fails the check (``out`` is then left untouched)."""
    from ..outpaths import check_out_file
    from ..progress import NullProgress, add_task
    from .submission import HEADER, check_submission

    out = check_out_file(out, "--out")
    if isinstance(classes, str):
        classes = parse_classes(classes)
    classes = None if classes is None else sorted({int(c) for c in classes})
    if classes is not None and any(not 0 <= c < N_CLASSES for c in classes):
        raise InputError(f"classes must be in 0..{N_CLASSES - 1}")
    if not 0.0 <= float(min_conf) <= 1.0:
        raise InputError("--min-conf must be between 0 and 1")
    t0 = time.perf_counter()
    jobs = _jobs(store, predictions, split, classes, min_conf)
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = WriteSummary(out=str(out), images=len(jobs), classes=classes or list(range(N_CLASSES)))
    progress = progress or NullProgress()
    task = add_task(progress, "submission", len(jobs), unit="img")
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    listing = tmp + ".ids.csv"
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(HEADER)
            for image_id, w, h, text, n in _map_rows(store, jobs, workers):
                writer.writerow((image_id, w, h, text))
                summary.triples += n
                summary.images_without_cells += int(not text)
                progress.advance(task)
        summary.cells = int(sum(len(j[4]) for j in jobs))
        with open(listing, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(("ID", "ImageWidth", "ImageHeight"))
            writer.writerows((j[1], j[2], j[3]) for j in jobs)
        report = check_submission(tmp, images=listing)
        if not report.ok:
            raise HpaError(report.problems.text(f"the submission written for {out} failed the check; not written"))
        os.replace(tmp, out)
    finally:
        for p in (tmp, listing):
            try:
                os.unlink(p)
            except OSError:
                pass
    summary.bytes = out.stat().st_size
    summary.seconds = time.perf_counter() - t0
    return summary


def _map_rows(store, jobs, workers: int):
    """Rows in job order: in-process for one worker (or a few images), else a process pool."""
    if workers <= 1 or len(jobs) < 2:
        global _STORE
        _STORE = store
        try:
            for job in jobs:
                yield _row(job)
        finally:
            _STORE = None
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    ctx = mp.get_context("forkserver")
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx, initializer=_init_worker,
                             initargs=(str(store.path),)) as pool:
        yield from pool.map(_row, jobs, chunksize=max(1, min(16, len(jobs) // (4 * workers))))


__all__ = ["WriteSummary", "encode_label_runs", "image_row", "parse_classes", "write_submission"]
