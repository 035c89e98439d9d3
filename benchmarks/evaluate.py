"""`hpa evaluate` speed: 600 images x 20 cells x 19 classes, against a per-pair pixel baseline.

    python benchmarks/evaluate.py [--images 600] [--cells 20] [--size 512] [--baseline-images 30] [--seed 0]

Makes a truth CSV (each cell 1-3 classes) and a submission CSV (a shifted segmentation,
every cell x 19 classes with random scores) in a temporary folder (not timed), then times:
reading + checking both files, the metric with mask IoU and with box IoU, and the
label-image entry point (no CSV at all). The baseline decodes every mask of the first
``--baseline-images`` images to pixels and computes each (detection, truth) IoU with
boolean array operations, one pair at a time (what a straightforward evaluator does);
its time is scaled to all images and compared. Prints seconds and ratios.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def voronoi_labels(rng: np.random.Generator, size: int, n_cells: int) -> np.ndarray:
    """Touching irregular cells: nearest of n_cells random seeds, on a coarse grid upscaled."""
    g = max(size // 8, 8)
    seeds = rng.random((n_cells, 2)) * g
    yy, xx = np.mgrid[:g, :g]
    d = (yy[None] - seeds[:, 0, None, None]) ** 2 + (xx[None] - seeds[:, 1, None, None]) ** 2
    coarse = (np.argmin(d, axis=0) + 1).astype(np.int32)
    coarse[d.min(axis=0) > (g / np.sqrt(n_cells)) ** 2] = 0  # some background
    reps = -(-size // g)
    return np.kron(coarse, np.ones((reps, reps), np.int32))[:size, :size]


def make_files(folder: Path, n_images: int, n_cells: int, size: int, seed: int):
    from hpacli.evaluate.submission import submission_row, truth_row, write_rows

    rng = np.random.default_rng(seed)
    truth_rows, sub_rows, truth_in, preds_in = [], [], {}, {}
    for i in range(n_images):
        lab = voronoi_labels(rng, size, n_cells)
        ids = [int(k) for k in np.unique(lab) if k]
        cells = {k: rng.choice(19, size=rng.integers(1, 4), replace=False).tolist() for k in ids}
        pred = np.roll(lab, tuple(rng.integers(-size // 40, size // 40 + 1, size=2)), axis=(0, 1))
        probs = {k: rng.random(19) for k in ids}
        truth_rows.append(truth_row(f"img{i:05d}", lab, cells))
        sub_rows.append(submission_row(f"img{i:05d}", pred, probs))
        truth_in[f"img{i:05d}"] = (lab, cells)
        preds_in[f"img{i:05d}"] = (pred, probs)
    write_rows(folder / "truth.csv", truth_rows)
    write_rows(folder / "sub.csv", sub_rows)
    return truth_in, preds_in


def baseline(truth_parsed, sub_parsed, image_ids) -> float:
    """Decode every triple's mask to pixels and compute each needed IoU one pair at a time."""
    from pycocotools import mask as mask_util

    t0 = time.perf_counter()
    for image_id in image_ids:
        t, s = truth_parsed[image_id], sub_parsed[image_id]
        gt = [(int(c), mask_util.decode(t.rles[k]).astype(bool)) for k, c in zip(t.mask_index, t.labels)]
        det = [(int(c), mask_util.decode(s.rles[k]).astype(bool)) for k, c in zip(s.mask_index, s.labels)]
        for c, m in det:
            for cg, g in gt:
                if cg == c:
                    _ = np.logical_and(m, g).sum() / np.logical_or(m, g).sum()
    return time.perf_counter() - t0


def main() -> None:
    import warnings

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=600)
    ap.add_argument("--cells", type=int, default=20)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--baseline-images", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from hpacli.evaluate.metric import evaluate, evaluate_instances
    from hpacli.evaluate.submission import parse_frame, read_frame

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        t = time.perf_counter()
        truth_in, preds_in = make_files(folder, args.images, args.cells, args.size, args.seed)
        mb = sum((folder / f).stat().st_size for f in ("truth.csv", "sub.csv")) / 2**20
        print(f"{args.images} images of {args.size}x{args.size}, ~{args.cells} cells, 19 classes per cell; "
              f"files {mb:.1f} MiB (made in {time.perf_counter() - t:.1f} s, not timed)")

        t = time.perf_counter()
        truth = parse_frame(read_frame(folder / "truth.csv"), kind="truth")
        sub = parse_frame(read_frame(folder / "sub.csv"), kind="submission")
        t_parse = time.perf_counter() - t
        assert not truth.problems and not sub.problems
        n_triples = sub.n_triples

        t = time.perf_counter()
        res_mask = evaluate(truth.images, sub.images, iou="mask")
        t_mask = time.perf_counter() - t
        t = time.perf_counter()
        res_box = evaluate(truth.images, sub.images, iou="box")
        t_box = time.perf_counter() - t
        t = time.perf_counter()
        res_lab = evaluate_instances(truth_in, preds_in, iou="mask")
        t_lab = time.perf_counter() - t
        assert abs(res_lab.mAP - res_mask.mAP) < 1e-9, (res_lab.mAP, res_mask.mAP)

        nb = min(args.baseline_images, args.images)
        t_base = baseline(truth.images, sub.images, list(sub.images)[:nb]) * args.images / nb

    print(f"{n_triples:,} submitted triples")
    print(f"read + check both CSVs       {t_parse:8.2f} s")
    print(f"metric, mask IoU (RLE)       {t_mask:8.2f} s   mAP {res_mask.mAP:.4f}")
    print(f"metric, box IoU              {t_box:8.2f} s   mAP {res_box.mAP:.4f}")
    print(f"hpa evaluate total (mask)    {t_parse + t_mask:8.2f} s")
    print(f"label images (no CSV), mask  {t_lab:8.2f} s   mAP {res_lab.mAP:.4f}")
    print(f"baseline: decode + per-pair pixel IoU, {nb} images scaled to {args.images}: {t_base:8.2f} s")
    print(f"speed-up of the metric (mask) over the baseline: {t_base / t_mask:8.1f}x; "
          f"of read + metric: {t_base / (t_parse + t_mask):.1f}x")


if __name__ == "__main__":
    main()
