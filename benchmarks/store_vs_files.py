"""Files and bytes of a store at the Kaggle scale: measured on a part, projected to 100,000 images.

The same data goes through the same `hpa` commands (ingest with a pixel cache, segment,
dedup, negatives, fold; plus pseudo-labels of every cell, 1024-d float16 embeddings,
written through the store module) in three layouts, each at three sizes (default 24, 48
and 96 synthetic 512² images, whose 512² masks are what 2048² HPA images get at the
networks' 0.25 scale):

* ``before``: the revision before Zarr sharding (``--before``, exported with `git archive`
  and run the same way): one chunk file per image in the pixel cache and the masks;
* ``now``: this revision's default layout (512 images and 16,384 cells per file);
* ``now, 16/file``: the same code with ``--images-per-file 16 --cells-per-file 512``, so that
  the measured sizes cross many file boundaries and the growth of the file count is seen.

Projection to 100,000 images (``--cells-per-image`` 22, as the seed's 2 million cells over
92,000 images): every array's rows are fitted linearly over the three sizes (rows per
image), and its files are the number of its chunk-grid cells at that many rows (a shard
is one file), plus its metadata; the same rule is first checked against the files counted
at the measured sizes. Bytes are fitted linearly per array group. The script prints the
files of the per-image arrays (pixel cache, cell and nuclei masks) and of the whole store.

Run: ``python benchmarks/store_vs_files.py`` (a few minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PER_IMAGE = ("images/cache", "segment/cells", "segment/nuclei")

WRITE_LABELS = """
import sys, numpy as np
from hpacli.store import BlockWork, open_store
from hpacli.store import pseudolabels as pl
from hpacli.store.cells import CellTable
st = open_store(sys.argv[1], "r+")
n = CellTable(st).n
rng = np.random.default_rng(0)
key = pl.prepare_run(st, "oof", n, 1024, {"cells_table_id": CellTable(st).table_id, "models": {}, "views": ["id"],
                                          "img_size": {}})
work = BlockWork(st, key, n, pl.BLOCK)
basis = rng.normal(size=(64, 1024)).astype(np.float32)
for b in work.todo():
    m = len(b)
    emb = (rng.normal(size=(m, 64)).astype(np.float32) @ basis / 8).astype(np.float16)
    probs = (1 / (1 + np.exp(-3 * rng.normal(size=(m, 19))))).astype(np.float32)
    pl.write_block(st, "oof", b.start, probs, emb, np.zeros(m, np.int8))
    work.mark_done(b)
"""


def export_revision(rev: str, dest: Path) -> Path:
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "hpacli"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


def run(argv, code_root: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(code_root), "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1",
           "HPA_LOAD_PLUGINS": ""}
    # cwd: `python -m` puts the working folder first on sys.path, ahead of PYTHONPATH
    r = subprocess.run([str(a) for a in argv], env=env, capture_output=True, text=True, cwd=code_root)
    if r.returncode != 0:
        raise SystemExit(f"failed: {' '.join(map(str, argv))}\n{r.stdout[-2000:]}{r.stderr[-3000:]}")


def subset(data: Path, n: int, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    lines = (data / "train.csv").read_text().splitlines()
    rows = [ln if i % 4 else f"{ln.split(',')[0]},18" for i, ln in enumerate(lines[1: n + 1])]  # a Negative in 4
    (out / "train.csv").write_text("\n".join([lines[0], *rows]) + "\n")
    (out / "train").symlink_to(data / "train")
    return out


def build(code_root: Path, data: Path, store: Path, cache: int, layout: list[str]) -> None:
    hpa = [sys.executable, "-m", "hpacli.cli.app"]
    run([*hpa, "ingest", data, "--store", store, "--cache-size", cache, "-q", *layout], code_root)
    run([*hpa, "segment", "--store", store, "-q"], code_root)
    run([*hpa, "dedup", "--store", store, "-q", "--out", store.parent / f"{store.name}-dup.csv"], code_root)
    run([*hpa, "negatives", "--store", store, "-q", "--png", store.parent / f"{store.name}-neg.png"], code_root)
    run([*hpa, "fold", "--store", store, "-k", 3], code_root)
    run([sys.executable, "-c", WRITE_LABELS, store], code_root)


def arrays(store: Path) -> dict[str, dict]:
    """Every array: shape, rows per file (the chunk grid: a shard is one file), files and bytes."""
    out = {}
    for meta in store.rglob("zarr.json"):
        node = json.loads(meta.read_text())
        if node.get("node_type") != "array":
            continue
        folder = meta.parent
        files = [p for p in folder.rglob("*") if p.is_file()]
        out[str(folder.relative_to(store))] = {
            "shape": [int(v) for v in node["shape"]],
            "grid": [int(v) for v in node["chunk_grid"]["configuration"]["chunk_shape"]],
            "files": len(files), "bytes": sum(p.stat().st_size for p in files),
        }
    return out


def tree(store: Path) -> tuple[int, int]:
    files = [p for p in store.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def grid_files(shape: list[int], grid: list[int]) -> int:
    """Chunk files of a fully written array (+1: its zarr.json)."""
    if not shape:
        return 2
    if any(s == 0 for s in shape):
        return 1
    return math.prod(math.ceil(s / g) for s, g in zip(shape, grid)) + 1


def group_of(key: str) -> str:
    if key in PER_IMAGE:
        return key
    head = key.split("/")[0]
    return {"images": "images (table)", "segment": "segment (per-image counts, markers)", "cells": "cells table",
            "labels": "pseudo-labels (per cell)", "dedup": "dedup", "negatives": "negatives",
            "folds": "folds"}.get(head, head)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="24,48,96", help="images in the measured stores")
    ap.add_argument("--image-size", type=int, default=512)
    ap.add_argument("--cache-size", type=int, default=256)
    ap.add_argument("--target", type=int, default=100_000, help="images to project to")
    ap.add_argument("--cells-per-image", type=float, default=22.0)
    ap.add_argument("--before", default="58afa8e", help="the revision before sharding ('' to skip)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="hpa-files-"))
    try:
        data = tmp / "data"
        run([sys.executable, "-m", "hpacli.cli.app", "synth", data, "--n-images", max(sizes), "--test-images", 0,
             "--size", args.image_size, "--workers", 2, "-q"], ROOT)
        layouts = {"now": (ROOT, []),
                   "now, 16/file": (ROOT, ["--images-per-file", 16, "--cells-per-file", 512])}
        if args.before:
            layouts = {f"before ({args.before})": (export_revision(args.before, tmp / "before"), []), **layouts}
        measured: dict[str, dict[int, dict]] = {}
        for name, (code, layout) in layouts.items():
            measured[name] = {}
            for n in sizes:
                store = tmp / f"{len(measured)}-{n}.zarr"
                build(code, subset(data, n, tmp / f"d{len(measured)}-{n}"), store, args.cache_size, layout)
                measured[name][n] = {"arrays": arrays(store), "tree": tree(store)}
                print(f"  {name:<22} {n:>4} images: {measured[name][n]['tree'][0]:>6} files, "
                      f"{measured[name][n]['tree'][1] / 2**20:8.1f} MiB", flush=True)
                shutil.rmtree(store)
        report(args, sizes, measured)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def report(args, sizes, measured) -> None:
    n_big = sizes[-1]
    print(f"\nmeasured ({args.image_size}² images, {args.cache_size}-px cache):")
    print(f"{'layout':<24}" + "".join(f"{f'{n} img files':>14}{'MiB':>9}" for n in sizes)
          + f"{'per-image arrays files':>26}")
    for name, by_n in measured.items():
        line = f"{name:<24}"
        for n in sizes:
            f, b = by_n[n]["tree"]
            line += f"{f:>14}{b / 2**20:>9.1f}"
        per_img = [sum(by_n[n]["arrays"][k]["files"] for k in PER_IMAGE if k in by_n[n]["arrays"]) for n in sizes]
        print(line + f"{' / '.join(map(str, per_img)):>26}")
    target = args.target
    print(f"\nprojected to {target:,} images ({args.cells_per_image:g} cells per image):")
    header = f"{'group':<40}" + "".join(f"{name:>24}" for name in measured)
    print(header)
    results = {}
    for name, by_n in measured.items():
        keys = set.intersection(*(set(by_n[n]["arrays"]) for n in sizes))
        cells_measured = np.array([by_n[n]["arrays"]["cells/image"]["shape"][0] for n in sizes], float)
        groups: dict[str, list[float]] = {}
        mismatch = 0
        for key in sorted(keys):
            shapes = [by_n[n]["arrays"][key]["shape"] for n in sizes]
            grid = by_n[n_big]["arrays"][key]["grid"]
            # the rule reproduces what was counted at every measured size
            for n, shp in zip(sizes, shapes):
                if grid_files(shp, grid) != by_n[n]["arrays"][key]["files"]:
                    mismatch += 1
            if shapes[-1]:
                rows = np.array([s[0] for s in shapes], float)
                x = np.array(sizes, float)
                if key.startswith(("labels/", "cells/")) and not key.endswith("offsets"):
                    # rows per cell: the synthetic images have fewer cells than HPA images
                    slope = np.polyfit(x, rows, 1)[0] / max(np.polyfit(x, cells_measured, 1)[0], 1e-9)
                    rows_t = slope * args.cells_per_image * target
                else:
                    slope, icpt = np.polyfit(x, rows, 1)
                    rows_t = slope * target + icpt
                shape_t = [max(1, int(round(rows_t))), *shapes[-1][1:]]
            else:
                shape_t = []
            files_t = grid_files(shape_t, grid)
            b = [by_n[n]["arrays"][key]["bytes"] for n in sizes]
            bytes_t = max(0.0, np.polyval(np.polyfit(sizes, b, 1), target))
            if key.startswith(("labels/", "cells/")) and not key.endswith("offsets"):
                bytes_t *= args.cells_per_image / max(cells_measured[-1] / n_big, 1e-9)
            g = groups.setdefault(group_of(key), [0, 0.0])
            g[0] += files_t
            g[1] += bytes_t
        results[name] = (groups, mismatch)
    names = list(measured)
    all_groups = sorted({g for name in names for g in results[name][0]},
                        key=lambda g: (g not in PER_IMAGE, g))
    for g in all_groups:
        cells = []
        for name in names:
            f, b = results[name][0].get(g, (0, 0.0))
            cells.append(f"{f:>10,} {b / 2**30:>8.1f} GiB")
        print(f"{g:<40}" + "".join(f"{c:>24}" for c in cells))
    tot_line, per_line = f"{'all arrays':<40}", f"{'per-image arrays (cache, masks)':<40}"
    for name in names:
        groups = results[name][0]
        tot_line += f"{sum(v[0] for v in groups.values()):>10,} {sum(v[1] for v in groups.values()) / 2**30:>8.1f} GiB"
        per = [groups.get(k, (0, 0.0)) for k in PER_IMAGE]
        per_line += f"{sum(v[0] for v in per):>10,} {sum(v[1] for v in per) / 2**30:>8.1f} GiB"
    print(tot_line)
    print(per_line)
    for name in names:
        mism = results[name][1]
        print(f"  {name}: the file rule {'matches every count' if not mism else f'misses {mism} count(s)'} "
              f"at {', '.join(map(str, sizes))} images")
    print("(group metadata files, one zarr.json per group, are left out of the projection: a few dozen)")


if __name__ == "__main__":
    main()
