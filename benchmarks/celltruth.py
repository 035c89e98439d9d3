"""Reading the training cells' truth (`cell_truth`, what `hpa demo`'s analyses and
`--targets truth` read): one `TruthReader` for all images against the per-image path.

    python benchmarks/celltruth.py STORE [--repeats 3]

STORE: an hpacli store with cell truth (e.g. `hpa-demo/hpa.zarr` after `hpa demo`). The
baseline decodes each image through `truth_label_images(store, i)`, which reads the images
table, the has-truth flags and the truth string again for every image (what `cell_truth`
did before it kept one reader); the new path is `cell_truth` itself. Both decode the same
label images (checked); the two are timed alternately, `--repeats` times each, and the
medians and their ratio are printed.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np


def per_image(store, images) -> list:
    from hpacli.store.truth import truth_label_images

    return [truth_label_images(store, int(i)) for i in images]


def one_reader(store, images) -> list:
    from hpacli.store.truth import TruthReader

    reader = TruthReader(store)
    return [reader.label_images(int(i)) for i in images]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    warnings.filterwarnings("ignore", message="Object at .* is not recognized")
    from hpacli.store import open_store
    from hpacli.store.truth import read_has

    store = open_store(args.store, "r")
    images = np.flatnonzero(read_has(store))
    if not len(images):
        raise SystemExit(f"{args.store} has no cell truth")
    a, b = per_image(store, images), one_reader(store, images)
    assert all(np.array_equal(x[0], y[0]) and x[1] == y[1] for x, y in zip(a, b)), "the two paths differ"
    times: dict[str, list[float]] = {"per image": [], "one reader": []}
    for _ in range(args.repeats):
        for name, fn in (("per image", per_image), ("one reader", one_reader)):
            t = time.perf_counter()
            fn(store, images)
            times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{len(images)} images with truth, {args.repeats} alternating repeats")
    for k, v in med.items():
        print(f"  {k:10s} {v:7.2f} s (median)")
    print(f"one reader is {med['per image'] / med['one reader']:.1f}x faster than per image")


if __name__ == "__main__":
    main()
