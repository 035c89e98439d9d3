"""Benchmark of `hpa submit --out` (hpacli.evaluate.write.write_submission).

Builds a store of synthetic test images (`hpa synth`, masks stored at the HPA scale 0.25
for images >= 1024 px), puts random probabilities in, and times writing the submission
(19 triples per cell, masks encoded at the original size) against a baseline measured in
the same run: the straightforward loop, one `encode_mask` per (cell) and a row string
per image, in one process.

    python benchmarks/submit_write.py [--size 2048] [--images 8] [--workers 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--work", type=Path, default=None, help="Folder for the store (reused when it is there).")
    args = ap.parse_args()

    from hpacli.classes import N_CLASSES
    from hpacli.evaluate.submission import format_prediction_string
    from hpacli.evaluate.write import write_submission
    from hpacli.io.masks import encode_mask
    from hpacli.store import open_store
    from hpacli.store.cells import CellTable
    from hpacli.store.segmentation import read_labels_full
    from tests.predict_store import make_truth_store, put_predictions

    tmp = args.work or Path(tempfile.mkdtemp(prefix="hpa-bench-submit-"))
    t = time.perf_counter()
    if (tmp / "s.zarr").exists():
        store = open_store(tmp / "s.zarr", "a")
    else:
        tmp.mkdir(parents=True, exist_ok=True)
        store, _ = make_truth_store(tmp, size=args.size, n_train=1, n_test=args.images, mask_scale=0.25)
    cells = CellTable(store)
    probs = np.random.default_rng(0).random((cells.n, N_CLASSES)).astype(np.float32)
    put_predictions(store, probs, block=64)
    test = np.flatnonzero(store.images.df()["split"] == "test")
    n_cells = int(np.isin(cells.column("image"), test).sum())
    size = int(store.images.df()["width"].iat[0])
    print(f"store: {len(test)} test images of {size}px, {n_cells} cells (setup {time.perf_counter() - t:.1f} s)")

    # baseline: per-cell encode_mask, one process
    t = time.perf_counter()
    for i in test:
        _, lab = read_labels_full(store, int(i))
        sl = cells.rows_of(int(i))
        labels, scores, masks = [], [], []
        for r in range(sl.start, sl.stop):
            m = encode_mask(lab == cells.column("cell_id")[r])
            for c in range(N_CLASSES):
                labels.append(c)
                scores.append(probs[r, c])
                masks.append(m)
        format_prediction_string(labels, scores, masks)
    base = time.perf_counter() - t
    print(f"baseline (encode_mask per cell, 1 process): {base:.2f} s, {len(test) / base:.2f} img/s")
    for w in sorted({0, args.workers}):
        t = time.perf_counter()
        s = write_submission(store, out=tmp / f"sub{w}.csv", workers=w)
        dt = time.perf_counter() - t
        print(f"write_submission workers={w}: {dt:.2f} s, {len(test) / dt:.2f} img/s, {s.triples} triples, "
              f"{s.bytes / 1e6:.1f} MB, checked; {base / dt:.2f}x the baseline")


if __name__ == "__main__":
    main()
