"""The ``segment`` stage: label every registered image not yet segmented.

Streams in blocks of images (memory stays flat whatever the number of images), resumable
and shardable through :class:`~hpacli.store.BlockWork`; layout in
:mod:`hpacli.store.segmentation`. The process that completes the last block builds the
``cells`` table.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..errors import HpaError, InputError, StoreError
from ..outpaths import check_out_dir, safe_file_name
from ..progress import NullProgress, add_task
from ..store import BlockWork, Shard, begin_stage, claim_settings
from ..store import segmentation as seglayout
from ..store.core import remove_partial_files
from ..store.work import per_file_for


def _segmenter_shapes(seg, images: list[np.ndarray], mask_scale: float | None) -> list[tuple[int, int]]:
    return [seglayout.mask_shape_for(*img.shape[1:], mask_scale) for img in images]


def _run_segmenter(seg, images, shapes):
    if hasattr(seg, "segment_scaled"):
        return seg.segment_scaled(images, shapes)
    out = []
    for (nuc, cells), shape in zip(seg.segment(images), shapes):
        out.append((seglayout.downsample_labels(np.asarray(nuc), shape),
                    seglayout.downsample_labels(np.asarray(cells), shape)))
    return out


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
                **segmenter_kw) -> dict:
    """Segment the store's images not segmented yet. Returns a summary dict."""
    from ..registry import create_segmenter

    store.require_writable()
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
    seg = create_segmenter(segmenter, device=device, batch_size=batch_size, **segmenter_kw)
    kw_plain = {k: (str(v) if isinstance(v, Path) else v) for k, v in segmenter_kw.items() if k != "models"}
    params = {"segmenter": segmenter, "mask_scale": mask_scale, "block_size": block_size, **kw_plain}
    settings = output_settings(segmenter, mask_scale, block_size, segmenter_kw)
    old = (store.attrs(seglayout.GROUP).get("provenance") or {}).get("params", {})
    if overwrite:
        store.delete(seglayout.GROUP)
    elif old and "settings" not in store.attrs(seglayout.GROUP) and bool(np.any(seglayout.n_cells(store) >= 0)) \
            and (old.get("segmenter") != segmenter or old.get("mask_scale") != mask_scale):
        raise HpaError(  # a store segmented by an hpacli that kept no settings
            f"the store was segmented with --segmenter {old.get('segmenter')} (mask scale "
            f"{old.get('mask_scale') or 'auto'}); continue with the same settings or pass --overwrite"
        )
    claim_settings(store, seglayout.GROUP, settings, "the segmentation of this store")
    run = begin_stage(store, seglayout.GROUP, "segment", params)

    heights = np.asarray(store.array("images/height")[:n])
    widths = np.asarray(store.array("images/width")[:n])
    shapes_all = [seglayout.mask_shape_for(int(h), int(w), mask_scale) for h, w in zip(heights, widths)]
    canvas = (max(s[0] for s in shapes_all), max(s[1] for s in shapes_all))
    store.group(seglayout.GROUP, create=True)
    # the markers first: they fix how many blocks share a file, and the arrays' files follow them
    work = BlockWork(store, seglayout.GROUP, n, block_size, per_file_for(store, seglayout.GROUP, "images", block_size))
    seglayout.ensure_layout(store, n, canvas, block_size, work.per_file)
    counts = seglayout.n_cells(store)
    done = work.done_mask()
    todo: list[tuple] = []
    for b in range(work.n_blocks):
        if not work.owner(b, shard):
            continue
        blk = work.block(b)
        # images whose count is written have their labels (counts are written last)
        missing = [i for i in range(blk.start, blk.stop) if counts[i] == seglayout.NOT_DONE]
        if missing or not done[b]:
            todo.append((blk, missing))
    total = sum(len(items) for _, items in todo)
    progress = progress or NullProgress()
    task = add_task(progress, f"segment [{segmenter}]", total, unit="img")
    problems: list[dict] = []
    n_written = 0
    n_cells_found = 0
    previews = 0
    t0 = time.perf_counter()
    ids = store.images.ids() if (todo and preview) else None
    try:
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
                        problems.append({"image": int(i), "problem": str(exc)})
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
                    n_cells_found += int(cells.max())
                    if previews < preview:
                        overlay_png(img, nuc, cells, preview_dir / safe_file_name(ids[i], ".png"))
                        previews += 1
                progress.advance(task, len(part))
            seglayout.write_block(store, blk.start, blk.stop, results)
            work.mark_done(blk)
            n_written += len(results)
    except BaseException:
        run.finish("failed")
        raise
    elapsed = time.perf_counter() - t0
    table_cells = None
    with seglayout.finish_lock(store):
        counts = seglayout.n_cells(store)
        if work.all_done() and not np.any(counts == seglayout.NOT_DONE):
            stale = n_written > 0 or not store.has("cells/offsets")
            if not stale:
                a = store.attrs("cells")
                stale = a.get("table_id") != store.attrs(seglayout.GROUP).get("cells_table_id") or \
                    int(a.get("n_images", -1)) != n
            for name in ("cells", "nuclei", "mask_shape", "n_cells", "_done"):  # no writer is left
                remove_partial_files(store, f"{seglayout.GROUP}/{name}")
            if stale:
                table_cells = seglayout.build_cells_table(store, progress=progress, params=params)
                store.update_attrs(seglayout.GROUP, {"cells_table_id": store.attrs("cells")["table_id"]})
            summary = {"images": n, "segmented": int((counts >= 0).sum()), "unreadable": int((counts == -2).sum()),
                       "without_cells": int((counts == 0).sum()), "cells": int(counts[counts > 0].sum())}
            run.finish("done", **summary)
        else:
            summary = {"images": n, "segmented": int((counts >= 0).sum())}
    return {
        **summary, "processed": n_written, "cells_found": n_cells_found, "seconds": elapsed,
        "images_per_s": (n_written / elapsed) if elapsed > 0 and n_written else None,
        "problems": problems, "all_done": work.all_done(), "cells_table_rows": table_cells,
        "preview_dir": str(preview_dir) if previews else None, "previews": previews,
    }
