"""Benchmark: post-processing `exact` (upstream's result, at 2048²) vs `fast` (network scale)
on the real HPA network outputs of tests/data, the classical segmenter's agreement with
exact on the same image, and images/s of the whole `classical` segment stage on 2048²
synthetic images.

    python benchmarks/segment_postprocess.py [--repeat 5] [--exact-repeat 3] [--images 4] [--skip-stage]

Both modes run in the same process, each timed several times; medians, their ratio and the
matched IoU of the results are printed. `exact` is checked against upstream's own labels
(tests/data/hpa_upstream_labels_2048.tif, made by HPA-Cell-Segmentation's label_cell).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"


def matched_iou(ref: np.ndarray, pred: np.ndarray) -> tuple[float, float, int, int]:
    """Mean and min over the reference instances of the IoU of their best predicted match,
    the number of reference instances, and how many have no match at IoU 0.5."""
    r = ref.ravel().astype(np.int64)
    p = pred.ravel().astype(np.int64)
    nr, npd = int(r.max()) + 1, int(p.max()) + 1
    inter = np.bincount(r * npd + p, minlength=nr * npd).reshape(nr, npd).astype(float)
    iou = inter / (inter.sum(1)[:, None] + inter.sum(0)[None, :] - inter + 1e-12)
    present = inter.sum(1)[1:] > 0
    best = (iou[1:, 1:].max(1) if npd > 1 else np.zeros(nr - 1))[present]
    if len(best) == 0:
        return 1.0, 1.0, 0, 0
    return float(best.mean()), float(best.min()), int(len(best)), int((best < 0.5).sum())


def count(labels: np.ndarray) -> int:
    return int(len(np.unique(labels)) - 1)


def compare(name: str, ref, pred) -> None:
    for what, k in (("cells", 1), ("nuclei", 0)):
        mean, low, n, unmatched = matched_iou(ref[k], pred[k])
        print(f"  {name} {what}: {count(pred[k])} vs {n}; matched IoU mean {mean:.4f}, min {low:.4f}; "
              f"unmatched at IoU 0.5: {unmatched}")


def bench_postprocess(repeat: int, exact_repeat: int) -> None:
    import tifffile

    from hpacli.segment.postprocess import label_cells_from_maps, upsample_labels

    nm = tifffile.imread(DATA / "hpa_nuclei_maps.tif")
    cm = tifffile.imread(DATA / "hpa_cell_maps.tif")
    label_cells_from_maps(nm, cm, mode="fast")  # warm imports
    times = {}
    results = {}
    for mode, n in (("fast", repeat), ("exact", exact_repeat)):
        ts = []
        for _ in range(n):
            t = time.perf_counter()
            results[mode] = label_cells_from_maps(nm, cm, mode=mode, output_size=(2048, 2048))
            ts.append(time.perf_counter() - t)
        times[mode] = (statistics.median(ts), min(ts))
        print(f"{mode:>5}: median {times[mode][0]:.3f} s, best {times[mode][1]:.3f} s over {n} runs "
              f"({', '.join(f'{x:.2f}' for x in ts)})")
    print(f"speed: fast is {times['exact'][0] / times['fast'][0]:.1f}x faster than exact by the medians, "
          f"{times['exact'][1] / times['fast'][1]:.1f}x by the best runs (same process)")

    up = tifffile.imread(DATA / "hpa_upstream_labels_2048.tif").astype(np.int64)
    diff = [int((results["exact"][k] != up[k]).sum()) for k in (0, 1)]
    same = "identical" if diff == [0, 0] else f"DIFFERENT ({diff[0]} nuclei px, {diff[1]} cell px)"
    print(f"exact vs upstream label_cell (exact = upstream): {same}")
    print("fast vs exact (reference: exact):")
    compare("fast", results["exact"], results["fast"])

    from hpacli.segment.classical import ClassicalSegmenter

    x = tifffile.imread(DATA / "hpa_cell_input.tif")  # red, yellow, blue at 512
    rgby = np.zeros((4,) + x.shape[1:], np.uint8)
    rgby[0], rgby[3], rgby[2] = x
    (nuc, cells), = ClassicalSegmenter().segment_scaled([rgby], [x.shape[1:]])
    classical = (upsample_labels(nuc, (2048, 2048)), upsample_labels(cells, (2048, 2048)))
    print("classical (weight-free, from the image at 512) vs exact (reference: exact):")
    compare("classical", results["exact"], classical)


def bench_stage(n_images: int) -> None:
    from hpacli.data.ingest import kaggle_candidates, run_ingest
    from hpacli.data.synth import SynthConfig, run_synth
    from hpacli.segment.stage import run_segment
    from hpacli.store import open_store

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        t = time.perf_counter()
        run_synth(root, SynthConfig(n_images=n_images, size=2048, test_images=0, seed=1))
        print(f"synth: {n_images} images of 2048² in {time.perf_counter() - t:.1f} s")
        st = open_store(Path(tmp) / "s.zarr", "a")
        run_ingest(st, kaggle_candidates(root, include_test=False), data_root=root)
        t = time.perf_counter()
        out = run_segment(st, segmenter="classical", batch_size=2)
        total = time.perf_counter() - t
        print(f"classical stage on {out['processed']} images of 2048² (PNG decode, segment at 512², store, "
              f"cells table): {total:.2f} s, {out['processed'] / total:.2f} images/s, {out['cells']} cells")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5, help="timed runs of fast")
    ap.add_argument("--exact-repeat", type=int, default=3, help="timed runs of exact")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--skip-stage", action="store_true")
    args = ap.parse_args()
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    bench_postprocess(args.repeat, args.exact_repeat)
    if not args.skip_stage:
        bench_stage(args.images)


if __name__ == "__main__":
    main()
