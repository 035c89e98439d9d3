"""Per-cell results in one Zarr store vs one HDF5 file per image (as the original solution did).

2,000 images x 15 cells: 19 float32 probabilities and a 1024-d float16 embedding per cell.
Prints bytes on disk, file count, write time and time to read every embedding back, as
ratios (store / files). Run: python benchmarks/store_vs_files.py [--images 2000 --cells 15]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def du(path: Path) -> tuple[int, int]:
    total = files = 0
    for dirpath, _, names in os.walk(path):
        for n in names:
            total += os.path.getsize(os.path.join(dirpath, n))
            files += 1
    return total, files


def make_data(n_images: int, cells: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    n = n_images * cells
    # embeddings like a network's FC output: correlated, roughly normal
    basis = rng.normal(size=(64, 1024)).astype(np.float32)
    emb = (rng.normal(size=(n, 64)).astype(np.float32) @ basis / 8).astype(np.float16)
    logits = rng.normal(size=(n, 19)).astype(np.float32) * 3
    probs = 1 / (1 + np.exp(-logits))
    return probs.astype(np.float32), emb


def write_store(path: Path, probs, emb, block: int) -> None:
    from hpacli.store import BlockWork, open_store

    st = open_store(path, "a")
    n = len(probs)
    p = st.ensure_array("labels/bench/probs", (n, 19), "float32", (block, 19), encoding="cell-probs")
    e = st.ensure_array("labels/bench/embeddings", (n, 1024), "float16", (block, 1024), encoding="cell-embeddings")
    work = BlockWork(st, "labels/bench", n, block)
    for b in work.todo():
        p[b.start : b.stop] = probs[b.start : b.stop]
        e[b.start : b.stop] = emb[b.start : b.stop]
        work.mark_done(b)


def read_store(path: Path) -> np.ndarray:
    from hpacli.store import open_store

    return np.asarray(open_store(path, "r").array("labels/bench/embeddings")[:])


def write_files(folder: Path, probs, emb, cells: int) -> None:
    import h5py

    folder.mkdir(parents=True)
    for i in range(len(probs) // cells):
        sl = slice(i * cells, (i + 1) * cells)
        with h5py.File(folder / f"img{i:06d}.h5", "w") as f:
            f.create_dataset("probs", data=probs[sl])
            f.create_dataset("embeddings", data=emb[sl])


def read_files(folder: Path) -> np.ndarray:
    import h5py

    out = []
    for p in sorted(folder.iterdir()):
        with h5py.File(p, "r") as f:
            out.append(f["embeddings"][:])
    return np.concatenate(out)


def timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--cells", type=int, default=15)
    ap.add_argument("--block", type=int, default=1024)
    args = ap.parse_args()
    probs, emb = make_data(args.images, args.cells)
    tmp = Path(tempfile.mkdtemp(prefix="hpa-bench-"))
    try:
        store, files = tmp / "hpa.zarr", tmp / "h5"
        tw_s, _ = timed(write_store, store, probs, emb, args.block)
        tw_f, _ = timed(write_files, files, probs, emb, args.cells)
        os.sync()
        tr_s, a = timed(read_store, store)
        tr_f, b = timed(read_files, files)
        assert np.array_equal(a, b) and np.array_equal(a, emb)
        bs, fs = du(store)
        bf, ff = du(files)
        print(f"{args.images} images x {args.cells} cells = {len(probs)} cells; 19 float32 + 1024 float16 each")
        print(f"{'':24}{'store':>14}{'HDF5 per image':>16}{'store/files':>13}")
        print(f"{'bytes on disk':24}{bs:>14,}{bf:>16,}{bs / bf:>13.3f}")
        print(f"{'files':24}{fs:>14,}{ff:>16,}{fs / ff:>13.3f}")
        print(f"{'write time (s)':24}{tw_s:>14.3f}{tw_f:>16.3f}{tw_s / tw_f:>13.3f}")
        print(f"{'read embeddings (s)':24}{tr_s:>14.3f}{tr_f:>16.3f}{tr_s / tr_f:>13.3f}")
        print(f"read speed-up {tr_f / tr_s:.1f}x; bytes ratio {bs / bf:.3f} (target <= 1.1); "
              f"store is one directory tree with {fs} chunk/metadata files, none per image")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
