"""The library under the CLI: every `hpa` command is a function you can call from Python.

Makes a tiny synthetic dataset, registers and segments it, and scores the segmentation
against the synthetic cell truth (cells given their true classes, so the score measures
segmentation only). Run: python examples/library_api.py [WORKDIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import hpacli


def main(work: Path) -> None:
    data, store_path = work / "data", work / "hpa.zarr"
    hpacli.run_synth(data, hpacli.SynthConfig(n_images=8, size=128, test_images=0, seed=1), force=True)
    store = hpacli.open_store(store_path, "a")
    if store.images.n == 0:
        hpacli.run_ingest(store, hpacli.kaggle_candidates(data), data_root=data, cache_size=128)
    seg = hpacli.run_segment(store, "classical")
    print(seg.to_json(indent=None))  # every stage returns a summary dataclass (hpa ... --json prints it)

    # reading what the stages stored
    cells = hpacli.CellTable(store)
    classes, matched = hpacli.cell_truth(store)
    print(f"{cells.n} cells segmented, {matched.mean():.0%} matched to a true cell (IoU >= 0.5)")
    truth, preds = {}, {}
    for i, image_id in enumerate(store.images.ids()):
        truth[image_id] = hpacli.truth_label_images(store, i)
        rows = cells.rows_of(i)
        labels = hpacli.read_labels_full(store, i)[1]
        ids = cells.column("cell_id")[rows]
        preds[image_id] = (labels, {int(c): classes[r].astype(np.float32) for c, r in zip(ids, range(rows.start, rows.stop))})
    result = hpacli.evaluate_instances(truth, preds)
    print(f"mAP with true classes on the segmented cells: {result.mAP:.3f} (1.0 = perfect segmentation)")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "hpa-library-example"))
