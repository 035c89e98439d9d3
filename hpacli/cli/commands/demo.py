"""hpa demo: the whole pipeline on a generated dataset, with a closing table of scores;
``--seeds`` runs the yardstick (every row on each seed, mean ± sd)."""

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
    seeds: Annotated[
        str | None,
        typer.Option("--seeds", help="The yardstick: every row (a)-(e) on each of these seeds (e.g. 7,8,9), one "
                     "folder each under --out; prints per seed and mean ± sd, writes yardstick.json and .md."),
    ] = None,
    rows: Annotated[
        str | None,
        typer.Option("--rows", help="Rows to run, comma-separated, or 'all': image, soft, yopt, outliers, truth "
                     "(default: image and the pipeline's best row)."),
    ] = None,
    jobs: Annotated[
        int, typer.Option("--jobs", "-j", min=1, help="With --seeds: run this many seeds at once, each in its own "
                          "process with a share of the CPU threads.")
    ] = 1,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Generate a synthetic dataset and run every stage on it (ingest → ... → evaluate); re-running resumes."""
    import shutil
    from dataclasses import replace

    from ...demo import ROWS, DemoSettings, run_demo, run_yardstick, yardstick_markdown
    from ...errors import HpaError
    from ...progress import console, make_progress
    from ..render import demo_tables

    if force and out.exists():
        marker = out / ("yardstick.json" if seeds and not (out / "demo.json").exists() else "demo.json")
        if not marker.exists() and not any(out.glob("seed*/demo.json")):
            raise HpaError(f"{out} does not hold a demo (no demo.json); not deleting it")
        shutil.rmtree(out)
    settings = DemoSettings.quick() if quick else DemoSettings()
    if rows:
        chosen = tuple(ROWS) if rows.strip() == "all" else tuple(r.strip() for r in rows.split(",") if r.strip())
        settings = replace(settings, rows=chosen)
    if seeds is not None:
        try:
            seed_list = [int(x) for x in seeds.split(",") if x.strip()]
        except ValueError:
            raise HpaError(f"--seeds takes integers joined by commas, not {seeds!r}") from None
        if not seed_list:
            raise HpaError("--seeds names no seed")
        with make_progress(disable=quiet) as progress:
            table = run_yardstick(out, seed_list, settings, device=device, progress=progress,
                                  log=lambda msg: progress.console.print(msg, highlight=False), jobs=jobs)
        console.print(yardstick_markdown(table, table.get("seconds_per_seed")), markup=False, highlight=False)
        console.print(f"written: {out / 'yardstick.json'}, {out / 'yardstick.md'}")
        return
    settings = replace(settings, seed=seed)
    settings.check()
    with make_progress(disable=quiet or json_out) as progress:
        result = run_demo(out, settings, device=device, progress=progress,
                          log=lambda msg: progress.console.print(msg, highlight=False))
    if json_out:
        from ..render import print_json

        print_json(result)
        return
    for table in demo_tables(result):
        console.print(table)
    console.print(f"artifacts in {out}: hpa.zarr, runs/, submission.csv (the pipeline), submission_image_model.csv "
                  f"(the image models), submissions/ (every row and split), cells.csv, overlays/, selection/")
