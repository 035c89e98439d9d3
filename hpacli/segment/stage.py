"""The ``segment`` stage: label every registered image not yet segmented.

Streams in blocks of images (memory stays flat whatever the number of images), resumable
and shardable through :class:`~hpacli.store.BlockWork`; layout in
:mod:`hpacli.store.segmentation`. The process that completes the last block builds the
``cells`` table.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import HpaError, InputError, StoreError
from ..outpaths import check_out_dir, safe_file_name
from ..progress import NullProgress, add_task
from ..store import BlockWork, Shard, begin_stage, claim_settings
from ..store import segmentation as seglayout
from ..summary import Summary


@dataclass
class SegmentSummary(Summary):
    images: int = 0  # registered images
    segmented: int = 0  # images with labels (all runs)
    unreadable: int | None = None  # set once every block is done
    without_cells: int | None = None
    cells: int | None = None
    processed: int = 0  # images segmented by this call
    cells_found: int = 0
    seconds: float = 0.0
    images_per_s: float | None = None
    problems: list = field(default_factory=list)
    all_done: bool = False
    cells_table_rows: int | None = None  # the cells table was built by this call
    preview_dir: str | None = None
    previews: int = 0


def _run_segmenter(seg, images, shapes):
    """(nuclei, cells) per image at the mask ``shapes``: the segmenter's ``segment_scaled``
    when it has one (the optional fast path of the contract), else ``segment`` at full size
    brought down to the mask shapes."""
    if hasattr(seg, "segment_scaled"):
        return seg.segment_scaled(images, shapes)
    out = []
    for (nuc, cells), shape in zip(seg.segment(images), shapes):
        out.append((seglayout.downsample_labels(np.asarray(nuc), shape),
                    seglayout.downsample_labels(np.asarray(cells), shape)))
    return out


def create(segmenter: str, options: dict, device: str = "auto", batch_size: int = 4):
    """The segmenter ``segmenter`` with its own ``options`` (checked against its factory);
    ``device`` and ``batch_size`` are passed when the factory takes them."""
    from ..registry import SEGMENTERS

    SEGMENTERS.check_options(segmenter, options, supplied=("device", "batch_size"))
    kw = dict(options)
    for key, value in (("device", device), ("batch_size", batch_size)):
        if SEGMENTERS.accepts(segmenter, key):
            kw[key] = value
    return SEGMENTERS.create(segmenter, **kw)


def _tidy(nuc: np.ndarray, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cells numbered 1..n (uint16), nuclei carrying their cell's id."""
    from .postprocess import _sequential

    cells = _sequential(np.asarray(cells).astype(np.int64))
    if cells.dtype != np.uint16:
        raise HpaError("an image has more than 65535 cells; the store keeps uint16 labels")
    nuc = np.where(np.asarray(nuc) > 0, cells, 0).astype(np.uint16)
    return nuc, cells


def overlay_png(rgby: np.ndarray, nuclei: np.ndarray, cells: np.ndarray, path: Path) -> None:
    """Cell (white) and nucleus (cyan) outlines on an RGB composite at mask resolution."""
    from PIL import Image
    from skimage.segmentation import find_boundaries

    from .classical import downscale

    shape = cells.shape
    rgb = np.stack([downscale(rgby[0], shape) + 0.5 * downscale(rgby[3], shape),
                    downscale(rgby[1], shape) + 0.5 * downscale(rgby[3], shape),
                    downscale(rgby[2], shape)], axis=-1)
    hi = np.percentile(rgb, 99.5, axis=(0, 1))
    rgb = (np.clip(rgb / np.maximum(hi, 1e-6), 0, 1) * 220).astype(np.uint8)
    rgb[find_boundaries(nuclei, mode="inner")] = (0, 255, 255)
    rgb[find_boundaries(cells, mode="inner")] = (255, 255, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)


def default_preview_dir(store) -> Path:
    return store.path.parent / f"{store.path.name}-segment-preview"


def file_record(value):
    """A weight file as it decides the output: its path, size and modification time."""
    import os

    try:
        st = os.stat(value)
    except (OSError, TypeError, ValueError):
        return str(value)
    return {"path": str(value), "bytes": int(st.st_size), "mtime": int(st.st_mtime)}


def output_settings(segmenter: str, mask_scale, block_size: int, segmenter_kw: dict) -> dict:
    """Every option that decides the stored masks: two shards (or a resumed run) must agree
    on all of them. Device and batch size do not change the masks and are left out."""
    out = {"segmenter": segmenter, "mask_scale": None if mask_scale is None else float(mask_scale),
           "block_size": int(block_size)}
    for k, v in sorted(segmenter_kw.items()):
        if k in ("models", "device", "batch_size", "progress"):
            continue
        out[k] = file_record(v) if isinstance(v, Path) or (isinstance(v, str) and k.endswith("_model")) else v
    return out


def run_segment(store, segmenter: str = "classical", shard: Shard = Shard(), batch_size: int = 4,
                device: str = "auto", preview: int = 0, progress=None, *, preview_dir=None,
                mask_scale: float | None = None, block_size: int = seglayout.BLOCK, overwrite: bool = False,
                options: dict | None = None, **segmenter_kw) -> SegmentSummary:
    """Segment the store's images not segmented yet. ``options`` (or keyword arguments)
    are the segmenter's own options (``-o key=value``)."""
    store.require_writable()
    segmenter_kw = {**(options or {}), **segmenter_kw}
    n = store.images.n
    if n == 0:
        raise StoreError(f"the store {store.path} has no images; run `hpa ingest` first")
    if batch_size < 1:
        raise InputError("--batch-size must be at least 1")
    if mask_scale is not None and not 0 < mask_scale <= 1:
        raise InputError("--mask-scale must be in (0, 1]")
    if overwrite and shard.count > 1:
        raise InputError("--overwrite cannot be combined with --shard (start over once, then shard)")
    if block_size < 1:
        raise InputError("the block size must be at least 1")
    # everything is checked before anything in the store changes (--overwrite deletes)
    if preview or preview_dir is not None:
        preview_dir = check_out_dir(preview_dir or default_preview_dir(store), "--preview-dir")
    # build the segmenter first: a missing weight file must not leave a stage record behind
    seg = create(segmenter, segmenter_kw, device, batch_size)
    kw_plain = {k: (str(v) if isinstance(v, Path) else v) for k, v in segmenter_kw.items() if k != "models"}
    params = {"segmenter": segmenter, "mask_scale": mask_scale, "block_size": block_size, **kw_plain}
    settings = output_settings(segmenter, mask_scale, block_size, segmenter_kw)
    old = seglayout.previous_params(store)
    if overwrite:
        seglayout.clear(store)
    elif old and not seglayout.has_settings(store) and bool(np.any(seglayout.n_cells(store) >= 0)) \
            and (old.get("segmenter") != segmenter or old.get("mask_scale") != mask_scale):
        raise HpaError(  # a store segmented by an hpacli that kept no settings
            f"the store was segmented with --segmenter {old.get('segmenter')} (mask scale "
            f"{old.get('mask_scale') or 'auto'}); continue with the same settings or pass --overwrite"
        )
    claim_settings(store, seglayout.GROUP, settings, "the segmentation of this store")
    # the layout is sized (or refused: masks larger than the stored canvas) before the stage starts
    heights, widths = store.images.sizes()
    shapes_all = [seglayout.mask_shape_for(int(h), int(w), mask_scale) for h, w in zip(heights, widths)]
    canvas = (max(s[0] for s in shapes_all), max(s[1] for s in shapes_all))
    seglayout.ensure_layout(store, n, canvas, block_size)
    work = BlockWork(store, seglayout.GROUP, n, block_size)
    with begin_stage(store, seglayout.GROUP, "segment", params) as run:
        counts = seglayout.n_cells(store)
        done = work.done_mask()
        todo: list[tuple] = []
        for b in range(work.n_blocks):
            if b % shard.count != shard.index:
                continue
            blk = work.block(b)
            # images whose count is written have their labels (counts are written last)
            missing = [i for i in range(blk.start, blk.stop) if counts[i] == seglayout.NOT_DONE]
            if missing or not done[b]:
                todo.append((blk, missing))
        total = sum(len(items) for _, items in todo)
        progress = progress or NullProgress()
        task = add_task(progress, f"segment [{segmenter}]", total, unit="img")
        out = SegmentSummary(images=n)
        t0 = time.perf_counter()
        ids = store.images.ids() if (todo and preview) else None
        for blk, items in todo:
            results: dict[int, tuple | None] = {}
            for s in range(0, len(items), batch_size):
                part = items[s:s + batch_size]
                imgs, ok = [], []
                for i in part:
                    try:
                        imgs.append(store.images.read_image(i))
                        ok.append(i)
                    except InputError as exc:
                        out.problems.append({"image": int(i), "problem": str(exc)})
                        results[i] = None
                if not imgs:
                    continue
                shapes = [shapes_all[i] for i in ok]
                for i, img, (nuc, cells) in zip(ok, imgs, _run_segmenter(seg, imgs, shapes)):
                    nuc, cells = _tidy(nuc, cells)
                    if cells.shape != shapes_all[i]:
                        raise HpaError(f"segmenter {segmenter} returned labels of shape {cells.shape} for image {i}, "
                                       f"expected {shapes_all[i]}")
                    results[i] = (nuc, cells)
                    out.cells_found += int(cells.max())
                    if out.previews < preview:
                        overlay_png(img, nuc, cells, preview_dir / safe_file_name(ids[i], ".png"))
                        out.previews += 1
                progress.advance(task, len(part))
            seglayout.write_block(store, blk.start, blk.stop, results)
            work.mark_done(blk)
            out.processed += len(results)
        out.seconds = time.perf_counter() - t0
        with seglayout.finish_lock(store):
            counts = seglayout.n_cells(store)
            if work.all_done() and not np.any(counts == seglayout.NOT_DONE):
                if out.processed > 0 or not seglayout.cells_table_current(store, n):
                    out.cells_table_rows = seglayout.build_cells_table(store, progress=progress, params=params)
                    seglayout.note_cells_table(store)
                out.segmented = int((counts >= 0).sum())
                out.unreadable = int((counts == seglayout.FAILED).sum())
                out.without_cells = int((counts == 0).sum())
                out.cells = int(counts[counts > 0].sum())
                run.finish("done", images=n, segmented=out.segmented, unreadable=out.unreadable,
                           without_cells=out.without_cells, cells=out.cells)
            else:
                out.segmented = int((counts >= 0).sum())
                run.keep_running()
    out.images_per_s = (out.processed / out.seconds) if out.seconds > 0 and out.processed else None
    out.all_done = work.all_done()
    out.preview_dir = str(preview_dir) if out.previews else None
    return out
