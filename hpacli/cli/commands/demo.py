"""hpa demo: the whole pipeline on a generated dataset, with a closing table of scores."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..options import DeviceOpt, JsonOpt, QuietOpt


def command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for every artifact (store, runs, submission, PNGs).")]
    = Path("hpa-demo"),
    quick: Annotated[bool, typer.Option("--quick", help="Smaller data and fewer epochs (about 3 minutes on 2 CPU cores).")]
    = False,
    force: Annotated[bool, typer.Option("--force", help="Delete an earlier demo in --out and start over.")] = False,
    device: DeviceOpt = "auto",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the generated dataset and the training runs.")] = 0,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Generate a synthetic dataset and run every stage on it (ingest → ... → evaluate); re-running resumes."""
    import shutil

    from ...demo import DemoSettings, run_demo
    from ...progress import console, make_progress
    from ..render import demo_tables

    if force and out.exists():
        if not (out / "demo.json").exists():
            from ...errors import HpaError

            raise HpaError(f"{out} does not hold a demo (no demo.json); not deleting it")
        shutil.rmtree(out)
    settings = DemoSettings.quick() if quick else DemoSettings()
    settings.seed = seed
    with make_progress(disable=quiet or json_out) as progress:
        result = run_demo(out, settings, device=device, progress=progress,
                          log=lambda msg: progress.console.print(msg, highlight=False))
    if json_out:
        from ..render import print_json

        print_json(result)
        return
    for table in demo_tables(result):
        console.print(table)
    console.print(f"artifacts in {out}: hpa.zarr, runs/, submission.csv, cells.csv, overlays/, selection/, segmentation/")
