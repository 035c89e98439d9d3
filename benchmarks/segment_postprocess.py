"""Benchmark: post-processing `exact` (upstream, at 2048²) vs `fast` (network scale) on the real
HPA network outputs, and images/s of the whole `classical` segment stage on 2048² synthetic images.

    python benchmarks/segment_postprocess.py [--repeat 5] [--images 4] [--skip-stage]

Both modes run in the same process, each timed ``--repeat`` times; medians, their ratio and
the matched IoU of the two results are printed.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

FIX = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "hpa-real-512"


def matched_iou(ref: np.ndarray, pred: np.ndarray) -> tuple[float, int, int]:
    r = ref.ravel().astype(np.int64)
    p = pred.ravel().astype(np.int64)
    nr, npd = int(r.max()) + 1, int(p.max()) + 1
    inter = np.bincount(r * npd + p, minlength=nr * npd).reshape(nr, npd).astype(float)
    iou = inter / (inter.sum(1)[:, None] + inter.sum(0)[None, :] - inter + 1e-12)
    best = iou[1:, 1:].max(1) if npd > 1 else np.zeros(nr - 1)
    return float(best.mean()), int((best < 0.5).sum()), int(nr - 1)


def bench_postprocess(repeat: int) -> None:
    import tifffile

    from hpacli.segment.postprocess import label_cells_from_maps

    nm = tifffile.imread(FIX / "nuclei_model_output.tif")
    cm = tifffile.imread(FIX / "cell_model_output.tif")
    label_cells_from_maps(nm, cm, mode="fast")  # warm imports
    times = {}
    results = {}
    for mode in ("fast", "exact"):
        ts = []
        for _ in range(repeat):
            t = time.perf_counter()
            results[mode] = label_cells_from_maps(nm, cm, mode=mode, output_size=(2048, 2048))
            ts.append(time.perf_counter() - t)
        times[mode] = statistics.median(ts)
        print(f"{mode:>5}: median {times[mode]:.3f} s over {repeat} runs ({', '.join(f'{x:.2f}' for x in ts)})")
    miou, unmatched, n_exact = matched_iou(results["exact"][1], results["fast"][1])
    print(f"ratio exact/fast: {times['exact'] / times['fast']:.1f}x")
    print(f"cells: exact {n_exact}, fast {int(results['fast'][1].max())}; mean matched IoU (exact cells) "
          f"{miou:.3f}; exact cells unmatched at IoU 0.5: {unmatched}")


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
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--skip-stage", action="store_true")
    args = ap.parse_args()
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    bench_postprocess(args.repeat)
    if not args.skip_stage:
        bench_stage(args.images)


if __name__ == "__main__":
    main()
