"""Obvious-staining negatives: Negative-labelled images whose cells show clear green signal.

For each image labelled Negative (class 18) and each of its cells: take the cell's bbox
from the green channel at original resolution, zero the pixels of other cells inside it
(background is kept), scale the crop to the 2048-pixel image scale (factor 2048 / H,
bilinear), and score the cell by the mean of its ``top_k`` (10) brightest pixels. A cell is
flagged when its score is >= ``threshold`` (150); an image is flagged when any cell is.
`hpa fold --negatives obvious` keeps only flagged Negative images.

Scores are stored (resumable in blocks of images); flags are derived from them, so a
rerun with another ``--threshold`` only recomputes the flags.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..classes import NEGATIVE
from ..summary import Summary

REFERENCE_SIZE = 2048
DEFAULT_THRESHOLD = 150.0
DEFAULT_TOP_K = 10
BLOCK = 16


@dataclass
class NegativesSummary(Summary):
    negative_images: int = 0
    without_cells: int = 0
    scored_images: int = 0
    scored_cells: int = 0
    flagged_cells: int = 0
    flagged_images: int = 0
    n_problems: int = 0
    problems: list = field(default_factory=list)


def cell_scores(green: np.ndarray, labels: np.ndarray, cell_ids: np.ndarray, bboxes: np.ndarray,
                top_k: int = DEFAULT_TOP_K, reference: int = REFERENCE_SIZE) -> np.ndarray:
    """float32 ``[n]``: the mean of the ``top_k`` brightest green pixels of each cell, other
    cells zeroed, at ``reference``-image scale. ``green`` and ``labels`` are the image's
    green channel and cell label image at original resolution; ``bboxes`` (r0, c0, r1, c1)."""
    from PIL import Image

    h = green.shape[0]
    factor = reference / h if h else 1.0
    out = np.full(len(cell_ids), np.nan, dtype=np.float32)
    for k, (cid, (r0, c0, r1, c1)) in enumerate(zip(cell_ids, bboxes)):
        lab = labels[r0:r1, c0:c1]
        if lab.size == 0:
            continue
        crop = np.where((lab == cid) | (lab == 0), green[r0:r1, c0:c1], 0).astype(np.uint8)
        if factor != 1.0:
            size = (max(1, round(crop.shape[1] * factor)), max(1, round(crop.shape[0] * factor)))
            crop = np.asarray(Image.fromarray(crop, mode="L").resize(size, Image.BILINEAR))
        flat = crop.reshape(-1)
        kk = min(top_k, flat.size)
        out[k] = float(np.partition(flat, flat.size - kk)[flat.size - kk :].mean())
    return out


def run_negatives(
    store,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    top_k: int = DEFAULT_TOP_K,
    workers: int = 2,
    overwrite: bool = False,
    progress=None,
) -> NegativesSummary:
    """Score the cells of every Negative train image and store per-cell and per-image flags."""
    from concurrent.futures import ThreadPoolExecutor

    from ..errors import HpaError, InputError, StoreError
    from ..progress import NullProgress, add_task
    from ..store import BlockWork, begin_stage
    from ..store import negatives as sn
    from ..store.cells import CellTable

    store.require_writable()
    if top_k < 1:
        raise HpaError(f"--top-k must be at least 1, got {top_k}")
    images = store.images
    if images.n == 0:
        raise HpaError(f"the store {store.path} has no images; run `hpa ingest` first")
    cells = CellTable(store)
    from ..store import segmentation as seg

    offsets = cells.offsets()
    n_images = len(offsets) - 1
    labels = images.labels()[:n_images]
    split = images.df()["split"].to_numpy()[:n_images]
    counts = np.diff(offsets)
    negative = (labels[:, NEGATIVE] == 1) & (split != "test")
    work_images = np.flatnonzero(negative & (counts > 0))
    sn.prepare(store, cells.n, images.n, cells.table_id, work_images, top_k, overwrite=overwrite)
    params = {"threshold": threshold, "top_k": top_k, "reference_size": REFERENCE_SIZE,
              "table_id": cells.table_id}
    progress = progress or NullProgress()
    cell_id = cells.column("cell_id")
    bbox = cells.column("bbox")
    ids = images.ids()
    problems: list[dict] = []

    def score(i: int):
        rows = slice(int(offsets[i]), int(offsets[i + 1]))
        try:
            green = images.read_image(i)[1]
            _, lab = seg.read_labels_full(store, i)
        except (InputError, StoreError, OSError) as exc:
            return i, rows, None, str(exc)
        if lab.shape != green.shape:
            return i, rows, None, f"label image {lab.shape} does not match the image {green.shape}"
        return i, rows, cell_scores(green, lab, cell_id[rows], bbox[rows], top_k), None

    with begin_stage(store, sn.GROUP, "negatives", params) as run:
        work = BlockWork(store, sn.GROUP, len(work_images), BLOCK)
        todo = work.todo()
        task = add_task(progress, "negatives", sum(len(b) for b in todo), unit="img")
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for block in todo:
                done = []
                for i, rows, scores, problem in pool.map(score, work_images[block.start : block.stop].tolist()):
                    if problem is not None:
                        problems.append({"ID": str(ids[i]), "problem": problem})
                    else:
                        sn.write_scores(store, rows, scores)
                        done.append(i)
                    progress.advance(task)
                sn.mark_scored(store, np.asarray(done, dtype=np.int64))
                work.mark_done(block)
        cell_flag, image_flag = sn.write_flags(store, threshold)
        scores = sn.read_scores(store)
        scored = sn.read_image_scored(store)
        summary = NegativesSummary(
            negative_images=int(negative.sum()),
            without_cells=int((negative & (counts == 0)).sum()),
            scored_images=int(scored.sum()),
            scored_cells=int(np.isfinite(scores).sum()),
            flagged_cells=int(cell_flag.sum()),
            flagged_images=int(image_flag.sum()),
            n_problems=len(problems),
            problems=problems[:1000],
        )
        run.finish("done", **summary.as_dict())
    return summary


def negatives_png(store, path, n_each: int = 6, size: int = 128) -> int:
    """A PNG of the green channel of the highest-scoring flagged cells (top row) and the
    highest-scoring cells below the threshold (bottom row), with their scores."""
    from PIL import Image, ImageDraw

    from ..store import negatives as sn
    from ..store import segmentation as seg
    from ..store.cells import CellTable

    scores = sn.read_scores(store)
    flags = sn.read_cell_flags(store)
    finite = np.isfinite(scores)
    rows = []
    for want in (True, False):
        cand = np.flatnonzero(finite & (flags == want))
        rows.append(cand[np.argsort(-scores[cand], kind="stable")][:n_each])
    if not any(len(r) for r in rows):
        return 0
    cells = CellTable(store)
    image, cell_id, bbox = cells.column("image"), cells.column("cell_id"), cells.column("bbox")
    pad, text_h = 6, 16
    canvas = Image.new("L", (n_each * (size + pad) + pad, 2 * (size + text_h + pad) + pad), 24)
    draw = ImageDraw.Draw(canvas)
    drawn = 0
    for r, picks in enumerate(rows):
        for c, row in enumerate(picks):
            i = int(image[row])
            try:
                green = store.images.read_image(i)[1]
                _, lab = seg.read_labels_full(store, i)
            except Exception:  # unreadable now: leave the tile empty
                continue
            r0, c0, r1, c1 = (int(v) for v in bbox[row])
            sub = lab[r0:r1, c0:c1]
            crop = np.where((sub == cell_id[row]) | (sub == 0), green[r0:r1, c0:c1], 0).astype(np.uint8)
            thumb = Image.fromarray(crop, mode="L")
            thumb.thumbnail((size, size))
            x, y = pad + c * (size + pad), pad + r * (size + text_h + pad)
            canvas.paste(thumb, (x, y + text_h))
            draw.text((x, y), f"{scores[row]:.0f}" + (" flagged" if r == 0 else ""), fill=230)
            drawn += 1
    canvas.save(str(path))
    return drawn
