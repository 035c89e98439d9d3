"""Pseudo-labelling throughput and storage, against the seed's way, in the same run (CPU).

    python benchmarks/pseudolabel.py [--images 12] [--size 2048] [--mask 512] [--img-size 256]
        [--backbone test_resnet] [--batch-size 32] [--workers 1] [--naive-cells 48]
        [--cells-large 20000] [--per-image 20] [--dim 1024]

1. Throughput: ``run_pseudolabel`` (each image loaded once, crops cut in loader workers,
   batches across images, 4 views per batch) against a naive loop that handles one cell
   at a time (decode the image's PNGs, resize, crop, one forward per view), both on the
   same synthetic store, the same models and the same CPU threads. The naive loop runs on
   the first ``--naive-cells`` cells; its values are checked against the stored ones.
2. Storage: the run's arrays in the store against one HDF5 file per image holding the
   same probabilities and embeddings (the seed wrote such files, then merged them); then
   the same comparison at the real dimensions (``--cells-large`` cells, ``--per-image``
   cells per image, 1024-d float16 embeddings) with random values.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def voronoi_labels(rng: np.random.Generator, size: int, n: int) -> np.ndarray:
    """Touching cells: nearest of ``n`` random seeds, background beyond a radius."""
    pts = rng.uniform(0, size, (n, 2))
    yy, xx = np.mgrid[0:size, 0:size]
    d = (yy[..., None] - pts[:, 0]) ** 2 + (xx[..., None] - pts[:, 1]) ** 2
    lab = d.argmin(-1).astype(np.int32) + 1
    lab[d.min(-1) > (size / np.sqrt(n) * 0.6) ** 2] = 0
    return lab


def build_store(root: Path, n_images: int, size: int, mask: int, seed: int = 0):
    from PIL import Image

    from hpacli.data.ingest import kaggle_candidates, run_ingest
    from hpacli.store import open_store
    from hpacli.store import segmentation as SEG
    from hpacli.store.folds import write_image_folds

    rng = np.random.default_rng(seed)
    data = root / "data"
    (data / "train").mkdir(parents=True)
    rows = []
    labels = {}
    for i in range(n_images):
        iid = f"img{i:04d}"
        for c in ("red", "green", "blue", "yellow"):
            small = (rng.random((size // 32, size // 32)) * 255).astype(np.uint8)
            plane = Image.fromarray(small).resize((size, size), Image.BICUBIC)
            plane.save(data / "train" / f"{iid}_{c}.png")
        rows.append(f"{iid},{int(rng.integers(0, 19))}")
        lab = voronoi_labels(rng, mask, int(rng.integers(12, 20)))
        ids = np.unique(lab[lab > 0])
        lut = np.zeros(lab.max() + 1, dtype=np.uint16)
        lut[ids] = np.arange(1, len(ids) + 1)
        labels[i] = lut[lab]
    (data / "train.csv").write_text("ID,Label\n" + "\n".join(rows) + "\n")
    store = open_store(root / "hpa.zarr", "a")
    run_ingest(store, kaggle_candidates(data, include_test=False), data_root=data, workers=1)
    SEG.ensure_layout(store, n_images, (mask, mask))
    SEG.write_block(store, 0, n_images, {i: (lab, lab) for i, lab in labels.items()})
    SEG.build_cells_table(store)
    write_image_folds(store, np.arange(n_images) % 2)
    return store


def save_models(root: Path, backbone: str, img_size: int) -> str:
    import torch

    from hpacli.models.checkpoint import save_checkpoint
    from hpacli.models.timm_wrap import TimmClassifier

    for f in (0, 1):
        torch.manual_seed(f)
        m = TimmClassifier(backbone).eval()
        save_checkpoint(root / "runs" / f"fold{f}" / "best.pt", {
            "model_config": m.config, "model": m.state_dict(),
            # untrained weights: they saw no image (the out-of-fold guard needs the record)
            "train_config": {"extra": {"fold": f, "img_size": img_size, "trained_on": {"images": []}}},
        })
    return str(root / "runs" / "fold*" / "best.pt")


def naive(store, models_glob: str, rows: np.ndarray, views) -> tuple[float, dict]:
    """One cell at a time: decode, resize, crop, one forward per view (batch of 1)."""
    import torch

    from hpacli.data import crops as C
    from hpacli.data import views as V
    from hpacli.infer.models import expand_model_paths
    from hpacli.label.pseudolabel import load_fold_models
    from hpacli.store.cells import CellTable
    from hpacli.store.folds import read_image_folds

    fms = load_fold_models(expand_model_paths(models_glob))
    cells = CellTable(store)
    folds = read_image_folds(store)
    df = store.images.df()
    out = {}
    t = time.perf_counter()
    for r in rows:
        img = int(cells.column("image")[r])
        fm = fms[int(folds[img])]
        h, w = int(df.height[img]), int(df.width[img])
        pix, lab = C.load_image(store, img, fm.img_size, h, w, cache_size=None)
        box = C.scale_bbox(cells.column("bbox")[r], (h, w), lab.shape)
        x = torch.from_numpy(C.tile_fill(C.masked_crop(pix, lab, int(cells.column("cell_id")[r]), box), fm.img_size))
        x = x[None].float() / 255
        with torch.inference_mode():
            p = sum(torch.sigmoid(fm.model(V.apply_view(x, v))) for v in views) / len(views)
        out[int(r)] = p[0].numpy()
    return time.perf_counter() - t, out


def dir_size(path: Path) -> tuple[int, int]:
    total = files = 0
    for dp, _, fs in os.walk(path):
        for f in fs:
            total += os.path.getsize(os.path.join(dp, f))
            files += 1
    return total, files


def h5_per_image(folder: Path, offsets: np.ndarray, probs: np.ndarray, emb: np.ndarray) -> tuple[int, int]:
    import h5py

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(len(offsets) - 1):
        a, b = int(offsets[i]), int(offsets[i + 1])
        if a == b:
            continue
        with h5py.File(folder / f"img{i:06d}.h5", "w") as fh:
            fh.create_dataset("probs", data=probs[a:b])
            fh.create_dataset("embeddings", data=emb[a:b])
    return dir_size(folder)


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=12)
    ap.add_argument("--size", type=int, default=2048, help="image side (pixels)")
    ap.add_argument("--mask", type=int, default=512, help="label image side (mask resolution)")
    ap.add_argument("--img-size", type=int, default=256, help="image model input side")
    ap.add_argument("--backbone", default="test_resnet")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (same for both)")
    ap.add_argument("--naive-cells", type=int, default=40)
    ap.add_argument("--cells-large", type=int, default=20000)
    ap.add_argument("--per-image", type=int, default=20)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args()

    import torch

    from hpacli.data.views import PSEUDOLABEL_VIEWS
    from hpacli.label.pseudolabel import run_pseudolabel
    from hpacli.store import open_store
    from hpacli.store import pseudolabels as PL
    from hpacli.store.cells import CellTable

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="hpa-bench-pl-"))
    try:
        store = build_store(tmp, args.images, args.size, args.mask)
        models = save_models(tmp, args.backbone, args.img_size)
        cells = CellTable(store)
        n = cells.n
        print(f"{args.images} images {args.size}², {n} cells, 2 folds of {args.backbone} at {args.img_size}², "
              f"4 views, {args.threads} torch thread(s), CPU")

        t = time.perf_counter()
        s = run_pseudolabel(store, models, run="bench", batch_size=args.batch_size, device="cpu",
                            workers=args.workers)
        t_fast = time.perf_counter() - t
        assert s.complete
        rows = np.arange(min(args.naive_cells, n))
        t_naive, ref = naive(store, models, rows, PSEUDOLABEL_VIEWS)
        probs = PL.read_probs(store, "bench")
        err = max(float(np.abs(probs[r] - p).max()) for r, p in ref.items())
        fast_rate = s.cells_labelled / t_fast
        naive_rate = len(rows) / t_naive
        print(f"hpa pseudolabel  {fast_rate:8.1f} cells/s  ({s.cells_labelled} cells in {t_fast:.1f} s, "
              f"batch {args.batch_size}, {args.workers} loader worker(s))")
        print(f"naive per cell   {naive_rate:8.1f} cells/s  ({len(rows)} cells in {t_naive:.1f} s)")
        print(f"speed-up         {fast_rate / naive_rate:8.1f}x   (max |prob difference| {err:.1e})")

        # storage of this run
        st_bytes, st_files = dir_size(store.path / "labels" / "bench")
        emb = PL.read_embeddings(store, "bench")
        h5_bytes, h5_files = h5_per_image(tmp / "h5", cells.offsets(), probs, emb)
        print(f"\nstorage, this run ({n} cells, {emb.shape[1]}-d):")
        print(f"  store labels/bench   {human(st_bytes):>10}  {st_files:6d} files")
        print(f"  HDF5 per image       {human(h5_bytes):>10}  {h5_files:6d} files")

        # storage at the real dimensions
        n_large = args.cells_large
        n_img = -(-n_large // args.per_image)
        rng = np.random.default_rng(0)
        lp = rng.beta(0.3, 3.0, (n_large, 19)).astype(np.float32)
        le = rng.normal(0, 1, (n_large, args.dim)).astype(np.float16)
        big = open_store(tmp / "big.zarr", "a")
        t = time.perf_counter()
        PL.prepare_run(big, "r", n_large, args.dim, {"cells_table_id": "bench"})
        for a in range(0, n_large, PL.BLOCK):
            b = min(a + PL.BLOCK, n_large)
            PL.write_block(big, "r", a, lp[a:b], le[a:b], np.zeros(b - a, np.int8))
        t_store = time.perf_counter() - t
        sb, sf = dir_size(tmp / "big.zarr" / "labels" / "r")
        offsets = np.minimum(np.arange(n_img + 1) * args.per_image, n_large)
        t = time.perf_counter()
        hb, hf = h5_per_image(tmp / "h5big", offsets, lp, le)
        t_h5 = time.perf_counter() - t
        print(f"\nstorage, {n_large:,} cells in {n_img:,} images, {args.dim}-d float16 embeddings + 19 float32:")
        print(f"  store                {human(sb):>10}  {sf:6d} files  written in {t_store:.2f} s")
        print(f"  HDF5 per image       {human(hb):>10}  {hf:6d} files  written in {t_h5:.2f} s")
        print(f"  files ratio {hf / sf:.0f}x fewer in the store; bytes ratio {hb / sb:.2f}")
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
