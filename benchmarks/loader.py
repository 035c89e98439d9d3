"""Training-loader throughput: the store's pixel cache against PNG decoding, at 1024².

Writes N synthetic HPA-like images (four smooth 8-bit channel PNGs of ``--src`` px, like
the 2048² originals), ingests them with ``--cache-size`` = ``--size``, then reads every
image through ``StoreImageDataset`` in a DataLoader (``--workers`` processes, batch 8,
dihedral augmentation) from the cache and from the PNGs (decode + resize to ``--size``),
alternating, and prints images/s of each. Target: cache ≥ 3× PNG.

Run: ``OMP_WAIT_POLICY=PASSIVE python benchmarks/loader.py --n 16 --workers 2``
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from scipy.ndimage import gaussian_filter  # noqa: E402

from hpacli.data.ingest import kaggle_candidates, run_ingest  # noqa: E402
from hpacli.store import open_store  # noqa: E402
from hpacli.store.folds import write_image_folds  # noqa: E402
from hpacli.train.data import StoreImageDataset  # noqa: E402
from hpacli.train.trainer import ItemSampler  # noqa: E402


def make_data(root: Path, n: int, src: int) -> None:
    (root / "train").mkdir(parents=True)
    rng = np.random.default_rng(0)
    base = gaussian_filter(rng.random((src // 8, src // 8)), 2)
    rows = []
    for i in range(n):
        for c, name in enumerate(("red", "green", "blue", "yellow")):
            small = np.roll(base, 7 * i + 13 * c, axis=0)
            big = np.kron(small, np.ones((8, 8)))
            img = np.clip((big - big.min()) / (np.ptp(big) + 1e-9) * 200 + rng.normal(0, 6, big.shape), 0, 255)
            Image.fromarray(img.astype(np.uint8)).save(root / "train" / f"im{i:03d}_{name}.png")
        rows.append(f"im{i:03d},{i % 19}")
    (root / "train.csv").write_text("ID,Label\n" + "\n".join(rows) + "\n")


def rate(ds, workers: int, batch: int = 8) -> float:
    items = [(i, i) for i in range(len(ds))]
    loader = torch.utils.data.DataLoader(
        ds, batch_size=batch, sampler=ItemSampler(items), num_workers=workers,
        generator=torch.Generator().manual_seed(0),
    )
    t = time.perf_counter()
    n = 0
    for x, _ in loader:
        n += len(x)
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--src", type=int, default=2048)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        t = time.perf_counter()
        make_data(root, args.n, args.src)
        st = open_store(Path(tmp) / "s.zarr", "a")
        run_ingest(st, kaggle_candidates(root, include_test=False), data_root=root, cache_size=args.size, workers=2)
        write_image_folds(st, np.zeros(args.n, dtype=np.int8))
        print(f"{args.n} images {args.src}px written and ingested (cache {args.size}px) in {time.perf_counter() - t:.1f}s")
        rows = np.arange(args.n)
        targets = st.images.labels().astype(np.float32)
        cache = StoreImageDataset(st.path, rows, targets, args.size, source="cache")
        png = StoreImageDataset(st.path, rows, targets, args.size, source="png")
        rc, rp = [], []
        for _ in range(args.rounds):
            rp.append(rate(png, args.workers))
            rc.append(rate(cache, args.workers))
        c, p = max(rc), max(rp)
        print(f"loader at {args.size}px, {args.workers} workers, batch 8:")
        print(f"  pixel cache : {c:7.1f} img/s")
        print(f"  PNG decode  : {p:7.1f} img/s  (from {args.src}px, resized)")
        print(f"  ratio       : {c / p:.1f}x  (target >= 3x: {'met' if c / p >= 3 else 'NOT met'})")


if __name__ == "__main__":
    main()
