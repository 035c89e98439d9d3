"""A tiny store for prediction tests: `hpa synth` images, ingested, with the synthetic
truth label images as the segmentation (so truth and segmentation coincide)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from hpacli.classes import N_CLASSES
from hpacli.data.ingest import kaggle_candidates, run_ingest
from hpacli.data.synth import SynthConfig, run_synth
from hpacli.store import BlockWork, open_store
from hpacli.store import predictions as P
from hpacli.store import segmentation as seg


def make_truth_store(tmp: Path, size: int = 64, n_train: int = 2, n_test: int = 3, seed: int = 1,
                     mask_scale: float = 1.0, segment: bool = True):
    root = tmp / "data"
    run_synth(root, SynthConfig(n_images=n_train, size=size, test_images=n_test, seed=seed), force=True)
    store = open_store(tmp / "s.zarr", "a")
    store.set_layout(images_per_file=4, cells_per_file=16)  # small files: shards of the tests own whole files
    run_ingest(store, kaggle_candidates(root), data_root=root, workers=1)
    if segment:
        write_truth_segmentation(store, root, mask_scale)
    return store, root


def truth_labels(root: Path, image_id: str) -> tuple[np.ndarray, np.ndarray]:
    cells = np.asarray(Image.open(root / "truth_labels" / f"{image_id}_cells.png")).astype(np.uint16)
    nuc = np.asarray(Image.open(root / "truth_labels" / f"{image_id}_nuclei.png")).astype(np.uint16)
    return nuc, cells


def write_truth_segmentation(store, root: Path, mask_scale: float = 1.0, images=None) -> None:
    """The truth label images (downsampled to ``mask_scale``) as the store's segmentation,
    then the cells table, as `hpa segment` leaves them."""
    n = store.images.n
    ids = store.images.ids()
    df = store.images.df()
    shapes = [seg.mask_shape_for(int(h), int(w), mask_scale) for h, w in zip(df["height"], df["width"])]
    seg.ensure_layout(store, n, (max(s[0] for s in shapes), max(s[1] for s in shapes)))
    work = BlockWork(store, seg.GROUP, n, seg.BLOCK)
    todo = range(n) if images is None else images
    for b in range(work.n_blocks):
        blk = work.block(b)
        res = {}
        for i in range(blk.start, blk.stop):
            if i in todo:
                nuc, cells = truth_labels(root, ids[i])
                res[i] = (seg.downsample_labels(nuc, shapes[i]), seg.downsample_labels(cells, shapes[i]))
        seg.write_block(store, blk.start, blk.stop, res)
        if all(i in todo for i in range(blk.start, blk.stop)):
            work.mark_done(b)
    if (seg.n_cells(store) >= 0).all():
        seg.build_cells_table(store)
        store.update_attrs(seg.GROUP, {"cells_table_id": store.attrs("cells")["table_id"],
                                       "provenance": {"params": {"segmenter": "classical", "mask_scale": mask_scale}}})


def truth_classes(root: Path) -> dict[tuple[str, int], list[int]]:
    cells = pd.read_csv(root / "cells.csv", dtype={"labels": str}, keep_default_na=False)
    return {(r.ID, int(r.cell_id)): [int(c) for c in str(r.labels).split("|") if c != ""]
            for r in cells.itertuples()}


def perfect_probs(store, root: Path) -> np.ndarray:
    """float32 [C, 19]: 1 for each cell's true classes, 0 elsewhere."""
    from hpacli.store.cells import CellTable

    cells = CellTable(store)
    ids = store.images.ids()
    truth = truth_classes(root)
    probs = np.zeros((cells.n, N_CLASSES), np.float32)
    for r, (img, cid) in enumerate(zip(cells.column("image"), cells.column("cell_id"))):
        probs[r, truth[(ids[img], int(cid))]] = 1.0
    return probs


def put_predictions(store, probs: np.ndarray, name: str = "default", block: int = 8) -> None:
    from hpacli.store.cells import CellTable

    cells = CellTable(store)
    P.prepare(store, name, len(probs), {"test": True}, block=block, overwrite=True)
    work = BlockWork(store, P.name_key(name), len(probs), block)
    for b in range(work.n_blocks):
        blk = work.block(b)
        sl = slice(blk.start, blk.stop)
        P.write_block(store, name, blk.start, probs[sl], cells.column("image")[sl], cells.column("cell_id")[sl],
                      cells.column("bbox")[sl])
        work.mark_done(b)
