"""The GPU rehearsal that `benchmarks/gpu.sh` runs: one GPU's rates and the one-GPU wall time
of the Kaggle-size job.

On synthetic 2048² images, each stage a real `hpa` process (rates: items over the wall time
minus that of the same command run again with nothing left to do, as in
`benchmarks/scale.py`): ingest (1024-px cache), segment classical (CPU) and ``hpa-unet``
(random DPN-UNet weights in the upstream file format, on the GPU) at 2048², pseudolabel
(DenseNet121-hpa, 1024² tiles, 4 views) of every training cell, predict (cell model at 512²,
default views) of the test cells; the model step of train-image (1024², batch 8) in bf16
and in fp16 with gradient scaling, channels_last, and of train-cell (512², batch 32), with
the real trainer on images held in memory (`benchmarks/gpu_train.py`); ``hpa denoise`` on
100,000 synthetic cells (CPU). Peak GPU memory of each stage comes from ``nvidia-smi``
sampled every 100 ms (device memory in use, the CUDA context included).

``--cpu-smoke``: the same steps at toy sizes on the CPU (checks the script; numbers mean nothing).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("hpa_scale_bench", HERE / "scale.py")
S = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = S  # dataclasses look their module up
_spec.loader.exec_module(S)


class GpuMemory:
    """Device memory in use (MiB) sampled by nvidia-smi; peak between marks."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self.proc = None
        if shutil.which("nvidia-smi"):
            self.proc = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-lms", "100"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                self.samples.append((time.time(), float(line.split(",")[0])))
            except ValueError:
                pass

    def peak(self, t0: float, t1: float) -> float | None:
        vals = [m for t, m in self.samples if t0 <= t <= t1]
        return max(vals) if vals else None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu-smoke", action="store_true")
    ap.add_argument("--images", type=int, default=24, help="train images (2048²)")
    ap.add_argument("--test-images", type=int, default=8)
    ap.add_argument("--denoise-cells", default="50000,100000", help="cell counts de-noised (the growth is fitted)")
    ap.add_argument("--keep", type=Path)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    smoke = args.cpu_smoke
    p = dict(size=2048, tile=1024, crop=512, backbone="densenet121-hpa", device="cuda", train_batch=8, cell_batch=32,
             pl_batch=64, workers=min(16, os.cpu_count() or 1), steps=30, images=args.images,
             test_images=args.test_images, denoise=[int(v) for v in args.denoise_cells.split(",")])
    if smoke:
        p.update(size=256, tile=64, crop=64, backbone="resnet10t", device="cpu", train_batch=2, cell_batch=4,
                 pl_batch=8, workers=0, steps=2, images=4, test_images=2, denoise=[1500, 3000])
    work = args.keep or Path(tempfile.mkdtemp(prefix="hpa-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    mem = GpuMemory()
    t_all = time.perf_counter()
    marks: dict[str, tuple[float, float]] = {}
    results: dict[str, dict] = {}

    def timed(name, fn):
        t0 = time.time()
        out = fn()
        marks[name] = (t0, time.time())
        return out

    try:
        w = p["workers"]
        data, store, ustore = work / "data", work / "s.zarr", work / "u.zarr"
        print(f"[{p['images']} + {p['test_images']} synthetic {p['size']}² images; device {p['device']}]", flush=True)
        S.run(S.hpa("synth", data, "--n-images", p["images"], "--test-images", p["test_images"], "--size", p["size"],
                    "--workers", max(w, 1), "-q"))
        n_img = p["images"] + p["test_images"]
        timed("ingest", lambda: S.stage("ingest", p["size"], n_img, "img", S.hpa(
            "ingest", data, "--store", store, "--cache-size", p["tile"], "--workers", max(w, 1), "-q"), [store]))
        timed("segment classical", lambda: S.stage("segment classical", p["size"], n_img, "img", S.hpa(
            "segment", "--store", store, "-q"), [store]))
        weights = work / "dpn_unet_random.pth"
        S.run([sys.executable, HERE / "scale.py", "--make-unet", weights])  # in a child: this process stays small
        S.run(S.hpa("ingest", data, "--store", ustore, "-q", "--workers", max(w, 1)))
        timed("segment hpa-unet", lambda: S.stage("segment hpa-unet", p["size"], n_img, "img", S.hpa(
            "segment", "--store", ustore, "--segmenter", "hpa-unet", "--nuclei-model", weights, "--cell-model", weights,
            "--device", p["device"], "--batch-size", 4, "-q"), [ustore], note="random weights"))
        shutil.rmtree(ustore, ignore_errors=True)
        S.run(S.hpa("dedup", "--store", store, "--out", work / "dup.csv", "-q"))
        S.run(S.hpa("fold", "--store", store, "-k", 2, "--ignore-duplicates", "--negatives", "all"))

        # model steps in memory (the trainer, no disk): train-image bf16 and fp16, train-cell
        def step_rate(name, size, batch, amp):
            out = work / f"{name}.json"
            S.run([sys.executable, HERE / "gpu_train.py", "--backbone", p["backbone"], "--size", size, "--batch", batch,
                   "--steps", p["steps"], "--warmup", 3 if not smoke else 1, "--amp", amp, "--device", p["device"],
                   "--workers", min(w, 8), "--json", out])
            res = json.loads(out.read_text())
            results[name] = res
            print(f"  {name:<26} {res['img_per_s']:9.1f} img/s  {res['ms_per_step']:8.1f} ms/step  "
                  f"peak {res['peak_gib']:.1f} GiB ({res['amp']}, batch {batch}, {size}²)", flush=True)
            return res

        for amp in ("bf16", "fp16"):
            timed(f"train-image {amp}", lambda amp=amp: step_rate(f"train-image {amp}", p["tile"], p["train_batch"],
                                                                   amp))
        timed("train-cell", lambda: step_rate("train-cell", p["crop"], p["cell_batch"], "auto"))

        # checkpoints for pseudolabel and predict: one step each through the CLI
        runs = work / "runs"
        train = ["train-image", "--store", store, "--backbone", p["backbone"], "--img-size", p["tile"], "--batch-size",
                 p["train_batch"] if not smoke else 2, "--accum", 1, "--epochs", 1, "--max-steps", 1, "--negatives",
                 "all", "--workers", w, "--device", p["device"], "--save-minutes", 0, "-q"]
        for f in (0, 1):
            S.run(S.hpa(*train, "--fold", f, "--out", runs / "image" / f"fold{f}"))
        models = ",".join(str(runs / "image" / f"fold{f}" / "last.pt") for f in (0, 1))
        cells = S.n_cells(store)
        pl = S.hpa("pseudolabel", "--store", store, "--models", models, "--run", "oof", "--batch-size", p["pl_batch"],
                   "--workers", w, "--device", p["device"], "-q")
        labelled = timed("pseudolabel", lambda: _measure("pseudolabel (4 views)", p["size"], pl, store,
                                                        lambda: S.count(store, "labels/oof/model", lambda m: m >= 0)))
        S.run(S.hpa("train-cell", "--store", store, "--labels", "oof", "--fold", 0, "--init-from",
                    runs / "image" / "fold0" / "last.pt", "--img-size", p["crop"], "--batch-size", p["cell_batch"],
                    "--accum", 1, "--epochs", 1, "--max-steps", 1, "--workers", w, "--device", p["device"],
                    "--save-minutes", 0, "--out", runs / "cell" / "fold0", "-q"))
        pr = S.hpa("predict", "--store", store, "--models", runs / "cell" / "fold0" / "last.pt", "--split", "test",
                   "--workers", w, "--device", p["device"], "--batch-size", p["pl_batch"], "-q")
        timed("predict", lambda: _measure("predict (1 model)", p["size"], pr, store,
                                          lambda: S.count(store, "predictions/default/probs",
                                                          lambda a: __import__("numpy").isfinite(a).all(axis=1))))
        for n in p["denoise"]:
            dn = work / f"cells{n}.zarr"
            S.cell_store(dn, n)
            timed(f"denoise {n}", lambda n=n, dn=dn: S.stage(f"denoise {n}", f"{n / 1000:g}k", n, "cell", S.hpa(
                "denoise", "--store", dn, "--run", "r", "--recall-sample", 0, "-q"), [dn], noop=False))
            shutil.rmtree(dn, ignore_errors=True)
        print(f"  ({cells} cells in the store, {labelled} labelled)", flush=True)
    finally:
        mem.stop()
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    report(p, results, marks, mem, time.perf_counter() - t_all, args.json)


def _measure(name, size, argv, store, items):
    b0 = S.tree(store)
    r = S.run(argv)
    b1 = S.tree(store)
    n = items()
    over = S.run(argv).wall
    row = S.Row(name, str(size), n, "cell", r.wall, over, r.rss_mib, b1[0] - b0[0], b1[1] - b0[1])
    S.ROWS.append(row)
    print(f"  {name:<26} {row.rate:9.1f} cell/s  ({n} cells, {r.wall:.1f} s, start-up {over:.1f} s)", flush=True)
    return n


def report(p, results, marks, mem, total, json_path) -> None:
    rows = {r.stage: r for r in S.ROWS}
    print("\n" + "=" * 96)
    print(f"{'stage':<28}{'rate':>16}{'peak GPU memory':>18}{'peak RSS':>12}")

    def gpu(name):
        m = mem.peak(*marks[name]) if name in marks else None
        return f"{m / 1024:.1f} GiB" if m is not None else "-"

    for name, r in rows.items():
        print(f"{name:<28}{r.rate:>11.2f} {r.unit}/s{gpu(name.split(' (')[0]):>18}{r.rss_mib / 1024:>9.1f} GiB")
    for name, res in results.items():
        print(f"{name:<28}{res['img_per_s']:>11.1f} img/s{gpu(name):>18}   (torch peak {res['peak_gib']:.1f} GiB)")
    K, C = S.KAGGLE_IMAGES, S.KAGGLE_CELLS
    dns = sorted((r for r in S.ROWS if r.stage.startswith("denoise")), key=lambda r: r.items)
    dn = dns[-1]
    b_dn = S.fit_exponent([r.items for r in dns], [r.wall for r in dns]) if len(dns) > 1 else 1.0
    jobs = [
        ("ingest", K, rows["ingest"].seconds_per_item),
        ("segment (hpa-unet)", K, rows["segment hpa-unet"].seconds_per_item),
        ("train-image (bf16)", 5 * 10 * K * 4 // 5, 1 / results["train-image bf16"]["img_per_s"]),
        ("pseudolabel", C, rows["pseudolabel (4 views)"].seconds_per_item),
        (f"denoise (CPU; time ∝ n^{b_dn:.2f})", C, None),
        ("train-cell", 5 * 5 * C * 4 // 5, 1 / results["train-cell"]["img_per_s"]),
        ("predict", S.TEST_CELLS * 5, rows["predict (1 model)"].seconds_per_item),
    ]
    print(f"\nprojected one-GPU wall time of the Kaggle-size job ({K:,} images, {C:,} cells):")
    total_s = 0.0
    for name, items, per in jobs:
        if per is None:  # 3 folds, each grown from the largest measured store by the fitted exponent
            secs = dn.wall * ((items / 3) / (dn.items / 3)) ** b_dn
        else:
            secs = items * per
        total_s += secs
        print(f"  {name:<34}{items:>12,}  {S.fmt_time(secs):>10}")
    print(f"  {'total':<34}{'':>12}  {S.fmt_time(total_s):>10}   (this script ran {S.fmt_time(total)})")
    if json_path:
        json_path.write_text(json.dumps({"rows": [r.__dict__ | {"rate": r.rate} for r in S.ROWS], "steps": results,
                                         "projection_seconds": total_s}, indent=1, default=str))


if __name__ == "__main__":
    main()
