"""Cell-crop loader of ``hpa train-cell`` against the model it feeds, on CPU.

Writes N synthetic images (four smooth 8-bit channel PNGs of ``--src`` px) with a grid of
``--cells`` cells each (label images at the segmentation's 0.25 scale, written through the
segmentation layout, cells table built from them), then measures:

* loader crops/s: :class:`hpacli.train.cell.CellCropDataset` (masked crop, tile, pad,
  resize to ``--img-size``, random flip) through a DataLoader with ``--workers`` processes
  at batch ``--batch``, in the trainer's order (all cells shuffled) and with
  ``--image-window`` (cells shuffled within windows of images), from the PNGs and from the
  pixel cache;
* model cells/s: one training step (forward, backward, Adam) of ``--backbone`` on a batch
  of the same size, ``--threads`` torch threads, after a warm-up step.

The loader is not the bottleneck when loader crops/s ≥ model cells/s (ratio ≥ 1).

Run: ``OMP_WAIT_POLICY=PASSIVE python benchmarks/cell_loader.py --n 8 --img-size 256 --batch 8``
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from scipy.ndimage import gaussian_filter  # noqa: E402

from hpacli.data.ingest import kaggle_candidates, run_ingest  # noqa: E402
from hpacli.store import open_store  # noqa: E402
from hpacli.store import segmentation as SEG  # noqa: E402
from hpacli.store.cells import CellTable  # noqa: E402
from hpacli.train.cell import CellCropDataset, windowed_order  # noqa: E402
from hpacli.train.trainer import ItemSampler  # noqa: E402


def make_data(root: Path, n: int, src: int) -> None:
    (root / "train").mkdir(parents=True)
    rng = np.random.default_rng(0)
    base = gaussian_filter(rng.random((src // 8, src // 8)), 2)
    rows = []
    for i in range(n):
        for c, name in enumerate(("red", "green", "blue", "yellow")):
            big = np.kron(np.roll(base, 7 * i + 13 * c, axis=0), np.ones((8, 8)))
            img = np.clip((big - big.min()) / (np.ptp(big) + 1e-9) * 200 + rng.normal(0, 6, big.shape), 0, 255)
            Image.fromarray(img.astype(np.uint8)).save(root / "train" / f"im{i:03d}_{name}.png")
        rows.append(f"im{i:03d},{i % 19}")
    (root / "train.csv").write_text("ID,Label\n" + "\n".join(rows) + "\n")


def grid_labels(rng: np.random.Generator, size: int, per_side: int) -> np.ndarray:
    """``per_side``² cells of random size on a grid, neighbours' boxes touching."""
    lab = np.zeros((size, size), dtype=np.uint16)
    step = size // per_side
    k = 1
    for gy in range(per_side):
        for gx in range(per_side):
            h, w = int(rng.integers(step // 2, step + 1)), int(rng.integers(step // 3, step + 1))
            r0, c0 = gy * step, gx * step
            lab[r0 : r0 + h, c0 : c0 + w] = k
            k += 1
    return lab


def make_store(tmp: Path, n: int, src: int, cells: int, cache: bool):
    data = tmp / "data"
    if not data.exists():
        make_data(data, n, src)
    st = open_store(tmp / f"hpa{'_cache' if cache else ''}.zarr", "a")
    run_ingest(st, kaggle_candidates(data), data_root=data, cache_size=src if cache else None, workers=1)
    mask = src // 4
    rng = np.random.default_rng(1)
    per_side = max(1, int(round(cells ** 0.5)))
    SEG.ensure_layout(st, n, (mask, mask))
    SEG.write_block(st, 0, n, {i: (grid_labels(rng, mask, per_side),) * 2 for i in range(n)})
    SEG.build_cells_table(st)
    return st


def loader_rate(ds: CellCropDataset, order: np.ndarray, workers: int, batch: int) -> float:
    items = [(int(i), int(i) + 1) for i in order]
    loader = torch.utils.data.DataLoader(
        ds, batch_size=batch, sampler=ItemSampler(items), num_workers=workers, drop_last=True,
        prefetch_factor=4 if workers else None, generator=torch.Generator().manual_seed(0),
    )
    t = time.perf_counter()
    n = 0
    for x, _ in loader:
        n += len(x)
    return n / (time.perf_counter() - t)


def model_rate(backbone: str, img: int, batch: int, steps: int) -> float:
    from hpacli.models.build import create_model
    from hpacli.registry import create_loss

    model = create_model(backbone).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    loss_fn = create_loss("soft-focal-symmetric-lovasz-hardlog")
    x = torch.rand(batch, 4, img, img)
    y = torch.rand(batch, 19)

    def step():
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=8, help="images")
    ap.add_argument("--src", type=int, default=1024, help="image side (px)")
    ap.add_argument("--cells", type=int, default=25, help="cells per image")
    ap.add_argument("--img-size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--image-window", type=int, default=4)
    ap.add_argument("--backbone", default="densenet121-hpa")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print(f"{args.n} images of {args.src}², {args.cells} cells each; crops at {args.img_size}², batch {args.batch}, "
              f"{args.workers} loader workers, {args.threads} model threads")
        results = {}
        for cache in (False, True):
            st = make_store(tmp, args.n, args.src, args.cells, cache)
            n_cells = CellTable(st).n
            rows = np.arange(n_cells)
            ds = CellCropDataset(st.path, rows, np.zeros((n_cells, 19), np.float32), args.img_size, augment=True)
            rng = np.random.default_rng(0)
            src = "cache" if cache else "png"
            results[f"{src}, all shuffled"] = loader_rate(ds, rng.permutation(n_cells), args.workers, args.batch)
            order = windowed_order(ds.image, args.image_window, rng)
            results[f"{src}, window {args.image_window}"] = loader_rate(ds, order, args.workers, args.batch)
        model = model_rate(args.backbone, args.img_size, args.batch, args.steps)
        print(f"{n_cells} cells per pass")
        print(f"model ({args.backbone}) training: {model:8.2f} cells/s ({model / args.batch:.3f} steps/s)")
        for name, r in results.items():
            print(f"loader [{name:>20}]: {r:8.1f} crops/s   loader/model = {r / model:6.1f}x")


if __name__ == "__main__":
    main()
