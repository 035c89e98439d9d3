"""The whole pipeline (`hpa demo`) on a generated dataset: the closing table and each
step's wall and CPU time. Run: python benchmarks/pipeline.py [--quick] [--out DIR] [--device auto]

The table compares, on the synthetic dev and test images' cell truth, (a) the image-level
models of all folds applied to each cell with the pipeline's best row (and any other rows
asked for with --rows), and reports the selections' recovery of the mitotic-spindle cells
that the image labels missed. CPU time (this process and its workers) is printed beside wall
time: on a shared machine it is the steadier measure of a step's cost. The multi-seed
yardstick is `hpa demo --seeds 7,8,9`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=None, help="keep the artifacts here (default: a temp folder)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rows", default=None, help="comma-separated rows, or 'all' (default: the demo's)")
    args = ap.parse_args()

    from dataclasses import replace

    from rich.console import Console

    from hpacli.classes import MITOTIC_SPINDLE
    from hpacli.cli.render import demo_tables
    from hpacli.demo import ROWS, DemoSettings, run_demo
    from hpacli.progress import make_progress

    out = args.out or Path(tempfile.mkdtemp(prefix="hpa-pipeline-"))
    settings = replace(DemoSettings.quick() if args.quick else DemoSettings(), seed=args.seed)
    if args.rows:
        settings = replace(settings, rows=tuple(ROWS) if args.rows == "all" else tuple(args.rows.split(",")))
    t = time.perf_counter()
    load = os.getloadavg()[0]
    try:
        with make_progress() as progress:
            result = run_demo(out, settings, device=args.device, progress=progress)
        console = Console()
        for table in demo_tables(result):
            console.print(table)
        rows = result.scores["rows"]
        a, b = rows["image"]["test"], rows[settings.best]["test"]
        spindle = str(MITOTIC_SPINDLE)
        console.print(
            f"test mAP best row / image models = {b['mAP'] / max(a['mAP'], 1e-9):.3f}; "
            f"spindle AP best - image = {(b['per_class_AP'].get(spindle) or 0) - (a['per_class_AP'].get(spindle) or 0):+.4f}; "
            f"wall {time.perf_counter() - t:.0f} s, CPU {sum(result.cpu_timings.values()):.0f} s "
            f"(load average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end, {os.cpu_count()} CPUs)")
    finally:
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
