"""A real-resolution rehearsal: every stage at HPA image sizes, projected to the Kaggle-size job.

Synthetic 16-bit images of 1728², 2048² and 3072² (``hpa synth --bits 16``) go through the
real commands, each started as its own ``hpa`` process: ingest (with a 512-px pixel cache)
→ segment (``classical``, and ``hpa-unet`` with randomly initialised DPN-UNet weights saved
in the upstream whole-module format, to time the networks) → negatives → dedup → fold →
pseudolabel (DenseNet121-hpa at the seed's 1024² tiles, 4 views, on the first cells: one
``--shard`` of blocks of 4 cells) → predict (the cell model at 512², on the first cells).
Training is timed on a small store: train-image (DenseNet121-hpa, 1024², batch 2) and
train-cell (512² crops, batch 4) from the difference between a 1-step and a 3-step run,
so start-up and validation cancel. ``hpa denoise`` runs on stores of synthetic cells
(pseudo-labels and 1024-d float16 embeddings written into a store directly; default 50,000,
100,000 and 400,000 cells) reading and writing the store.

Per stage and size it prints items/s, peak RSS, bytes and files written (the store and
the stage's own outputs). A stage's rate is its items over (wall time − the wall time of
the same command run again, when it has nothing left to do): start-up, model loading and
closing steps do not count as per-item cost. The growth of each image stage with the image
side is fitted over the three sizes (time per image ∝ side^b), and the Kaggle-size job
(22,000 + 70,000 images, 2 million cells; training 5 folds × 10 epochs of the image model
and 5 × 5 of the cell model; de-noising 3 folds of the 2 million cells; prediction 559 test
images × 22 cells × 5 models) is projected from the rates at 2048² (the range over
1728²–3072² beside it) on this machine. Numbers are this machine's, measured in one run;
the load average is printed because the cores may be shared.

Run: ``python benchmarks/scale.py`` (about 15–20 minutes on 2 quiet cores);
``--quick`` for a small smoke run (sizes 256/384/512, tiny models, 2,000–8,000 cells).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
KAGGLE_IMAGES = 22_000 + 70_000
KAGGLE_CELLS = 2_000_000
TEST_CELLS = 559 * 22
MiB = 2**20


# ------------------------------------------------------------------------------ processes
@dataclass
class Run:
    argv: list
    wall: float
    rss_mib: float
    rc: int
    out: str


def env() -> dict:
    e = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "SLURM_ARRAY_TASK_ID", "HPA_SHARD")}
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    e.update({"PYTHONPATH": path, "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1", "HPA_LOAD_PLUGINS": ""})
    return e


def _hwm_kib(pid: int) -> int:
    """The process's peak resident memory so far (VmHWM; reset by exec, unlike ru_maxrss,
    which would count the parent's memory a forked child held before exec)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def run(argv: list, check: bool = True) -> Run:
    """Run a command; its wall time and peak RSS (VmHWM, read every 50 ms)."""
    argv = [str(a) for a in argv]
    with tempfile.TemporaryFile("w+") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env(), cwd=ROOT, text=True)
        peak = 0
        while proc.poll() is None:
            peak = max(peak, _hwm_kib(proc.pid))
            time.sleep(0.05)
        wall = time.perf_counter() - t0
        log.seek(0)
        out = log.read()
    r = Run(argv, wall, peak / 1024, proc.returncode, out)
    if check and r.rc != 0:
        raise SystemExit(f"failed ({r.rc}): {' '.join(argv)}\n{out[-4000:]}")
    return r


def hpa(*args) -> list:
    return [sys.executable, "-m", "hpacli.cli.app", *args]


def tree(*paths: Path) -> tuple[int, int]:
    """Bytes and files under ``paths`` (files or folders)."""
    from hpacli.store.core import disk_usage

    return disk_usage(*paths)


@dataclass
class Row:
    stage: str
    size: str
    items: int
    unit: str
    wall: float
    overhead: float
    rss_mib: float
    bytes_written: int
    files_written: int
    note: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def seconds_per_item(self) -> float:
        """(wall − start-up) per item; the whole wall time when start-up is not separable
        (the difference is under a fifth of the run: noise between the two runs)."""
        work = self.wall - self.overhead
        return (work if work > 0.2 * self.wall else self.wall) / max(self.items, 1)

    @property
    def rate(self) -> float:
        return 1.0 / self.seconds_per_item


ROWS: list[Row] = []


def stage(name: str, size, items: int, unit: str, argv: list, watch: list[Path], noop: bool = True,
          note: str = "") -> Row:
    """Run a stage command, then (``noop``) the same again with nothing left to do."""
    b0, f0 = tree(*[p for p in watch if p.exists()])
    r = run(argv)
    b1, f1 = tree(*[p for p in watch if p.exists()])
    overhead = run(argv).wall if noop else 0.0
    row = Row(name, str(size), int(items), unit, r.wall, overhead, r.rss_mib, b1 - b0, f1 - f0, note)
    ROWS.append(row)
    print(f"  {name:<22} {size!s:>6} {items:>5} {unit:<5} {r.wall:7.1f} s (start-up {overhead:5.1f} s) "
          f"{row.rate:8.3f} {unit}/s  {r.rss_mib:7.0f} MiB  {(b1 - b0) / MiB:8.1f} MiB  {f1 - f0:5d} files",
          flush=True)
    return row


# ------------------------------------------------------------------------------ inputs
def synth(out: Path, n: int, size: int, seed: int, bits: int = 16) -> float:
    r = run(hpa("synth", out, "--n-images", n, "--test-images", 0, "--size", size, "--bits", bits, "--seed", seed,
                "--workers", 2, "-q"))
    return r.wall


def mark_negative(data: Path, n: int = 1) -> None:
    """Label the first ``n`` images Negative (class 18), so that `hpa negatives` scores them."""
    csv = data / "train.csv"
    lines = csv.read_text().splitlines()
    for i in range(1, 1 + n):
        lines[i] = lines[i].split(",")[0] + ",18"
    csv.write_text("\n".join(lines) + "\n")


def random_dpn_unet(path: Path) -> None:
    """A randomly initialised DPN-UNet saved as upstream saves its files: a whole pickled
    module whose classes are ``pytorch_zoo.*`` (what `hpa segment --segmenter hpa-unet` reads)."""
    import types

    import torch

    from hpacli.segment import dpn, unet

    torch.manual_seed(0)
    model = unet.DPNUnet().eval()
    spec = {"pytorch_zoo.unet": ["DPNUnet"], "pytorch_zoo.abstract_model": ["ConvBottleneck", "UnetDecoderBlock"],
            "pytorch_zoo.dpn": ["DualPathBlock", "BnActConv2d", "CatBnAct"]}
    added = ["pytorch_zoo"]
    sys.modules["pytorch_zoo"] = types.ModuleType("pytorch_zoo")
    mapping = {}
    for modname, names in spec.items():
        mod = types.ModuleType(modname)
        sys.modules[modname] = mod
        added.append(modname)
        for name in names:
            base = getattr(unet, name, None) or getattr(dpn, name)
            setattr(mod, name, type(name, (base,), {"__module__": modname}))
            mapping[base] = getattr(mod, name)
    changed = []
    try:
        for sub in model.modules():
            if type(sub) in mapping:
                changed.append((sub, type(sub)))
                sub.__class__ = mapping[type(sub)]
        torch.save(model, path)
    finally:
        for sub, cls in changed:
            sub.__class__ = cls
        for name in added:
            sys.modules.pop(name, None)


def synthetic_pseudolabels(store_path: Path, run_name: str, seed: int = 0) -> int:
    """Soft labels and 1024-d embeddings for every cell of a store, written through the
    store's own module (what `hpa pseudolabel` writes); returns the cell count."""
    from hpacli.store import BlockWork, open_store
    from hpacli.store import pseudolabels as pl
    from hpacli.store.cells import CellTable

    st = open_store(store_path, "r+")
    n = CellTable(st).n
    rng = np.random.default_rng(seed)
    key = pl.prepare_run(st, run_name, n, 1024, {"cells_table_id": CellTable(st).table_id, "models": {},
                                                 "views": ["id"], "img_size": {}})
    work = BlockWork(st, key, n, pl.BLOCK)
    probs = rng.uniform(0, 1, (n, 19)).astype(np.float32)
    pl.write_block(st, run_name, 0, probs, rng.normal(size=(n, 1024)).astype(np.float16), np.zeros(n, np.int8))
    for b in range(work.n_blocks):
        work.mark_done(b)
    return n


def cell_store(path: Path, n: int, dim: int = 1024, per_image: int = 22, seed: int = 0) -> None:
    """A store of ``n`` cells with pseudo-labels, 1024-d float16 embeddings and 3 cell folds,
    written directly (no images): clusters in a 16-d latent space mapped to 1024-d, each
    cluster with its class profile."""
    from hpacli.store import BlockWork, open_store
    from hpacli.store import pseudolabels as pl
    from hpacli.store.cells import CellTable, write_cells_table
    from hpacli.store.folds import write_cell_folds

    rng = np.random.default_rng(seed)
    st = open_store(path, "a")
    n_img = -(-n // per_image)
    image = np.repeat(np.arange(n_img), per_image)[:n]
    write_cells_table(st, {"image": image, "cell_id": np.arange(n) % per_image + 1, "bbox": np.zeros((n, 4)),
                           "area": np.ones(n), "nucleus_bbox": np.zeros((n, 4)), "border": np.zeros(n, bool)}, n_img)
    key = pl.prepare_run(st, "r", n, dim, {"cells_table_id": CellTable(st).table_id, "models": {}, "views": ["id"],
                                           "img_size": {}})
    work = BlockWork(st, key, n, pl.BLOCK)
    centres = rng.normal(size=(300, 16)) * 2
    proj = rng.normal(size=(16, dim)).astype(np.float32) / 4
    profile = rng.dirichlet(np.full(19, 0.3), size=300).astype(np.float32)
    step = work.rows_per_file
    for s in range(0, n, step):
        m = min(step, n - s)
        c = rng.integers(0, 300, m)
        z = (centres[c] + rng.normal(size=(m, 16)) * 0.5).astype(np.float32)
        emb = (np.tanh(z @ proj) + rng.normal(size=(m, dim)).astype(np.float32) * 0.1).astype(np.float16)
        probs = np.clip(profile[c] * 3 + rng.normal(size=(m, 19)).astype(np.float32) * 0.05, 0, 1)
        pl.write_block(st, "r", s, probs, emb, np.zeros(m, np.int8))
        for b in range(s // pl.BLOCK, -(-(s + m) // pl.BLOCK)):
            work.mark_done(b)
    write_cell_folds(st, (np.arange(n) % 3).astype(np.int8))


def count(store: Path, key: str, test) -> int:
    from hpacli.store import open_store

    return int(test(np.asarray(open_store(store, "r").array(key)[:])).sum())


def n_cells(store: Path) -> int:
    from hpacli.store import open_store
    from hpacli.store.cells import CellTable

    return CellTable(open_store(store, "r")).n


# ------------------------------------------------------------------------------ the run
def fit_exponent(x, y) -> float:
    x, y = np.log(np.asarray(x, float)), np.log(np.asarray(y, float))
    return float(np.polyfit(x, y, 1)[0]) if len(x) >= 2 else float("nan")


def fmt_time(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    if seconds < 730 * 86400:
        return f"{seconds / 86400:.0f} days"
    return f"{seconds / 86400 / 365:.0f} years"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1728,2048,3072", help="image sides (the first three are fitted)")
    ap.add_argument("--reference", type=int, default=2048, help="the side the projection is made at")
    ap.add_argument("--images", type=int, default=2, help="images per size (2: one per fold)")
    ap.add_argument("--unet-images", type=int, default=1, help="images per size through hpa-unet")
    ap.add_argument("--denoise-cells", default="50000,100000,400000")
    ap.add_argument("--tile", type=int, default=1024, help="image model input (pseudolabel tiles)")
    ap.add_argument("--crop", type=int, default=512, help="cell model input")
    ap.add_argument("--backbone", default="densenet121-hpa")
    ap.add_argument("--quick", action="store_true", help="small sizes and models: checks the script works")
    ap.add_argument("--keep", type=Path, help="keep the work folder here")
    ap.add_argument("--json", type=Path, help="also write the rows and the projection as JSON")
    ap.add_argument("--make-unet", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.make_unet:
        random_dpn_unet(args.make_unet)
        return
    if args.quick:
        args.sizes, args.reference, args.denoise_cells = "256,384,512", 384, "2000,4000,8000"
        args.tile, args.crop, args.backbone = 64, 64, "resnet10t"
    sizes = [int(s) for s in args.sizes.split(",")]
    dn_sizes = [int(s) for s in args.denoise_cells.split(",")]
    work = args.keep or Path(tempfile.mkdtemp(prefix="hpa-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    load0 = os.getloadavg()
    print(f"hpacli scale rehearsal in {work}; {os.cpu_count()} CPU(s), load average {load0[0]:.1f} "
          f"{load0[1]:.1f} {load0[2]:.1f}", flush=True)
    try:
        run_all(args, sizes, dn_sizes, work)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    load1 = os.getloadavg()
    print(f"\ntotal {fmt_time(time.perf_counter() - t_start)}; load average at the end {load1[0]:.1f} "
          f"{load1[1]:.1f} {load1[2]:.1f}")


def run_all(args, sizes: list[int], dn_sizes: list[int], work: Path) -> None:
    # --------------------------------------------------------------- models, training rates (small store)
    print("\n[models and training rates: a small store of 16 images]", flush=True)
    small, small_data = work / "small.zarr", work / "small-data"
    synth(small_data, 16, 256, seed=100, bits=8)
    run(hpa("ingest", small_data, "--store", small, "-q"))
    run(hpa("segment", "--store", small, "-q"))
    run(hpa("fold", "--store", small, "-k", 2, "--ignore-duplicates", "--negatives", "all"))
    runs = work / "runs"
    train = ["train-image", "--store", small, "--backbone", args.backbone, "--img-size", args.tile, "--batch-size", 2,
             "--accum", 1, "--epochs", 1, "--negatives", "all", "--workers", 0, "--device", "cpu", "--source", "png",
             "--save-minutes", 0, "-q"]
    t1 = run(hpa(*train, "--fold", 0, "--max-steps", 1, "--out", runs / "image" / "fold0"))
    run(hpa(*train, "--fold", 1, "--max-steps", 1, "--out", runs / "image" / "fold1"))
    t3 = run(hpa(*train, "--fold", 0, "--max-steps", 3, "--out", runs / "image3"))
    ROWS.append(Row("train-image step", f"{args.tile}²", 4, "img", t3.wall, t1.wall, t3.rss_mib,
                    *tree(runs / "image3"), note="batch 2; 3 steps − 1 step"))
    print(f"  train-image: {ROWS[-1].rate:.3f} img/s at {args.tile}² (batch 2)", flush=True)
    image_models = f"{runs / 'image' / 'fold0' / 'last.pt'},{runs / 'image' / 'fold1' / 'last.pt'}"
    n_syn = synthetic_pseudolabels(small, "syn")
    tc = ["train-cell", "--store", small, "--labels", "syn", "--fold", 0, "--init-from",
          runs / "image" / "fold0" / "last.pt", "--img-size", args.crop, "--batch-size", 4, "--accum", 1,
          "--epochs", 1, "--workers", 0, "--device", "cpu", "--save-minutes", 0, "-q"]
    c1 = run(hpa(*tc, "--max-steps", 1, "--out", runs / "cell" / "fold0"))
    c3 = run(hpa(*tc, "--max-steps", 3, "--out", runs / "cell3"))
    ROWS.append(Row("train-cell step", f"{args.crop}²", 8, "cell", c3.wall, c1.wall, c3.rss_mib,
                    *tree(runs / "cell3"), note=f"batch 4; 3 steps − 1 step; {n_syn} cells"))
    print(f"  train-cell: {ROWS[-1].rate:.3f} cells/s at {args.crop}² crops (batch 4)", flush=True)
    cell_model = runs / "cell" / "fold0" / "last.pt"
    weights = work / "dpn_unet_random.pth"
    run([sys.executable, __file__, "--make-unet", weights])  # in a child: this process stays small

    # --------------------------------------------------------------- image stages per size
    for k, size in enumerate(sizes):
        print(f"\n[{size}² 16-bit images]", flush=True)
        data, store, unet_store = work / f"data{size}", work / f"s{size}.zarr", work / f"u{size}.zarr"
        t_synth = synth(data, args.images, size, seed=k + 1)
        print(f"  (synth: {args.images} image(s) in {t_synth:.0f} s)", flush=True)
        mark_negative(data, 1)
        stage("ingest", size, args.images, "img",
              hpa("ingest", data, "--store", store, "--cache-size", 512, "--cells-per-file", 4, "-q"), [store])
        stage("segment classical", size, args.images, "img", hpa("segment", "--store", store, "-q"), [store])
        if args.unet_images:
            run(hpa("ingest", subset(data, args.unet_images), "--store", unet_store, "-q"))
            stage("segment hpa-unet", size, args.unet_images, "img",
                  hpa("segment", "--store", unet_store, "--segmenter", "hpa-unet", "--nuclei-model", weights,
                      "--cell-model", weights, "--device", "cpu", "--batch-size", 1, "-q"), [unet_store],
                  note="random weights")
        cells = n_cells(store)
        png = work / f"negatives{size}.png"
        row = stage("negatives", size, 1, "img", hpa("negatives", "--store", store, "--png", png, "-q"), [store, png])
        row.note = f"{count(store, 'negatives/cell_score', np.isfinite)} cells scored"
        dup = work / f"dup{size}.csv"
        stage("dedup (hash)", size, args.images, "img", hpa("dedup", "--store", store, "--out", dup, "-q"),
              [store, dup, dup.with_suffix(".png")])
        run(hpa("fold", "--store", store, "-k", 2, "--ignore-duplicates", "--negatives", "all"))
        pl_cmd = hpa("pseudolabel", "--store", store, "--models", image_models, "--run", "r", "--block-size", 4,
                     "--shard", "0/100000", "--workers", 0, "--device", "cpu", "-q")
        b0 = tree(store)
        r = run(pl_cmd)
        b1 = tree(store)
        n_pl = count(store, "labels/r/model", lambda m: m >= 0)
        over = run(pl_cmd).wall
        ROWS.append(Row("pseudolabel (4 views)", str(size), n_pl, "cell", r.wall, over, r.rss_mib, b1[0] - b0[0],
                        b1[1] - b0[1], note=f"{args.tile}² tiles; {cells} cells in the store"))
        print(f"  {'pseudolabel (4 views)':<22} {size:>6} {n_pl:>5} cell  {r.wall:7.1f} s (start-up {over:5.1f} s) "
              f"{ROWS[-1].rate:8.3f} cell/s  {r.rss_mib:7.0f} MiB", flush=True)
        pr_cmd = hpa("predict", "--store", store, "--models", cell_model, "--split", "train", "--name", "p",
                     "--block-size", 4, "--shard", "0/100000", "--workers", 0, "--device", "cpu", "-q")
        b0 = tree(store)
        r = run(pr_cmd)
        b1 = tree(store)
        n_pr = count(store, "predictions/p/probs", lambda p: np.isfinite(p).all(axis=1))
        over = run(pr_cmd).wall
        ROWS.append(Row("predict (1 model)", str(size), n_pr, "cell", r.wall, over, r.rss_mib, b1[0] - b0[0],
                        b1[1] - b0[1], note=f"{args.crop}² crops, default TTA"))
        print(f"  {'predict (1 model)':<22} {size:>6} {n_pr:>5} cell  {r.wall:7.1f} s (start-up {over:5.1f} s) "
              f"{ROWS[-1].rate:8.3f} cell/s  {r.rss_mib:7.0f} MiB", flush=True)
        shutil.rmtree(unet_store, ignore_errors=True)

    # --------------------------------------------------------------- pair search at Kaggle size
    from hpacli.prep.dedup import find_pairs

    hashes = np.random.default_rng(0).integers(0, 2**63, size=(KAGGLE_IMAGES, 3), dtype=np.uint64)
    t0 = time.perf_counter()
    find_pairs(hashes, 12)
    pair_search = time.perf_counter() - t0
    print(f"\n[dedup pair search over {KAGGLE_IMAGES:,} hashes: {pair_search:.1f} s]", flush=True)

    # --------------------------------------------------------------- de-noising
    print("\n[hpa denoise on stores of synthetic cells]", flush=True)
    for n in dn_sizes:
        path = work / f"cells{n}.zarr"
        cell_store(path, n)
        stage("denoise", f"{n // 1000}k", n, "cell", hpa("denoise", "--store", path, "--run", "r",
                                                          "--recall-sample", 0, "-q"), [path], noop=False,
              note="3 folds, k=200, 50 eigenvectors")
        shutil.rmtree(path, ignore_errors=True)
    report(args, sizes, dn_sizes, pair_search)


def subset(data: Path, n: int) -> Path:
    """A Kaggle-layout folder listing the first ``n`` images of ``data`` (its train/ linked)."""
    out = data.with_name(data.name + f"-first{n}")
    out.mkdir(exist_ok=True)
    lines = (data / "train.csv").read_text().splitlines()
    (out / "train.csv").write_text("\n".join(lines[: n + 1]) + "\n")
    if not (out / "train").exists():
        (out / "train").symlink_to(data / "train")
    return out


# ------------------------------------------------------------------------------ report
def report(args, sizes, dn_sizes, pair_search: float) -> None:
    print("\n" + "=" * 100)
    print(f"{'stage':<24}{'size':>7}{'items':>7}{'items/s':>10}{'peak RSS':>11}{'written':>12}{'files':>7}  note")
    for r in ROWS:
        print(f"{r.stage:<24}{r.size:>7}{r.items:>7}{r.rate:>10.3f}{r.rss_mib:>8.0f} MiB"
              f"{r.bytes_written / MiB:>8.1f} MiB{r.files_written:>7}  {r.note}")
    ref = str(args.reference)

    def per_size(name):
        return {r.size: r for r in ROWS if r.stage == name}

    growth = {}
    print("\ngrowth with the image side (time per item ∝ side^b, fitted over "
          f"{', '.join(map(str, sizes[:3]))}):")
    for name in ("ingest", "segment classical", "segment hpa-unet", "negatives", "dedup (hash)",
                 "pseudolabel (4 views)", "predict (1 model)"):
        rows = per_size(name)
        xs = [int(s) for s in rows if s.isdigit()]
        if len(xs) >= 2:
            growth[name] = fit_exponent(xs, [rows[str(x)].seconds_per_item for x in xs])
            print(f"  {name:<24} b = {growth[name]:5.2f}  ("
                  + ", ".join(f"{x}²: {rows[str(x)].seconds_per_item:.2f} s" for x in xs) + ")")
    dn = per_size("denoise")
    dn_x = [r.items for r in dn.values()]
    dn_t = [r.wall for r in dn.values()]
    b_dn = fit_exponent(dn_x, dn_t)
    print(f"  {'denoise':<24} b = {b_dn:5.2f}  over cells (" + ", ".join(
        f"{r.items:,}: {r.wall:.0f} s, {r.rss_mib / 1024:.1f} GiB" for r in dn.values()) + ")")

    # the Kaggle-size job on this machine
    train_imgs = 5 * 10 * KAGGLE_IMAGES * 4 // 5
    train_cells = 5 * 5 * KAGGLE_CELLS * 4 // 5
    jobs = [  # stage, items, row name or a rate, note
        ("ingest", KAGGLE_IMAGES, "ingest", "images"),
        ("segment (classical)", KAGGLE_IMAGES, "segment classical", "images"),
        ("segment (hpa-unet)", KAGGLE_IMAGES, "segment hpa-unet", "images (instead of classical)"),
        ("negatives", KAGGLE_IMAGES, "negatives", "images: upper bound, only Negative-labelled images are scored"),
        ("dedup", KAGGLE_IMAGES, "dedup (hash)", f"images + pair search {pair_search:.0f} s"),
        ("train-image", train_imgs, "train-image step", f"5 folds × 10 epochs × 73,600 images at {args.tile}²"),
        ("pseudolabel", KAGGLE_CELLS, "pseudolabel (4 views)", f"cells × 4 views at {args.tile}²"),
        ("denoise", KAGGLE_CELLS, None, "3 folds of 667k cells, from the fitted growth"),
        ("train-cell", train_cells, "train-cell step", f"5 folds × 5 epochs × 1.6M cells at {args.crop}²"),
        ("predict", TEST_CELLS * 5, "predict (1 model)", "12,300 test cells × 5 fold models"),
    ]
    print(f"\nprojected wall time of the Kaggle-size job on this machine ({KAGGLE_IMAGES:,} images at {ref}², "
          f"range over {sizes[0]}²–{sizes[-1]}²; {KAGGLE_CELLS:,} cells):")
    total_lo = total_mid = total_hi = 0.0
    out = []
    for name, items, row, note in jobs:
        if row is None:
            big = max(dn.values(), key=lambda r: r.items)
            per_fold = big.wall / 3 * ((items / 3) / (big.items / 3)) ** b_dn
            mid = lo = hi = 3 * per_fold
        else:
            rows = per_size(row)
            if not rows:
                continue
            vals = {s: r.seconds_per_item * items for s, r in rows.items()}
            mid = vals.get(ref, next(iter(vals.values())))
            lo, hi = min(vals.values()), max(vals.values())
            if name == "dedup":
                mid, lo, hi = mid + pair_search, lo + pair_search, hi + pair_search
        if name != "segment (hpa-unet)":
            total_lo, total_mid, total_hi = total_lo + lo, total_mid + mid, total_hi + hi
        rng = f"  ({fmt_time(lo)} – {fmt_time(hi)})" if hi > lo * 1.05 else ""
        print(f"  {name:<22}{items:>12,}  {fmt_time(mid):>10}{rng}   {note}")
        out.append({"stage": name, "items": items, "seconds": mid, "low": lo, "high": hi, "note": note})
    print(f"  {'total (classical)':<22}{'':>12}  {fmt_time(total_mid):>10}  ({fmt_time(total_lo)} – "
          f"{fmt_time(total_hi)})")
    if args.json:
        args.json.write_text(json.dumps({"rows": [r.__dict__ | {"rate": r.rate} for r in ROWS], "growth": growth,
                                         "denoise_growth": b_dn, "projection": out}, indent=1, default=str))


if __name__ == "__main__":
    main()
