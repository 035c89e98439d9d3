"""hpa negatives: flag Negative-labelled images whose cells show obvious green staining."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..options import JsonOpt, OverwriteOpt, QuietOpt, ShardOpt, StoreOpt, WorkersOpt


def command(
    store: StoreOpt = Path("hpa.zarr"),
    threshold: Annotated[
        float, typer.Option("--threshold", "-t", min=0, max=255,
                            help="Flag a cell when the mean of its brightest green pixels is >= this.")
    ] = 150.0,
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="How many of the brightest pixels to average.")] = 10,
    png: Annotated[
        Path, typer.Option("--png", help="PNG of the top flagged cells and the top cells below the threshold.")
    ] = Path("negatives.png"),
    workers: WorkersOpt = 2,
    shard: ShardOpt = None,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Score every cell of the Negative images (resumable); store per-cell and per-image flags.

    `--shard i/n` in n processes at once splits the scoring; the last to finish writes the flags."""
    from rich.table import Table

    from ...outpaths import check_out_file
    from ...prep.negatives import negatives_png, run_negatives
    from ...progress import console, make_progress
    from ...store import open_store, parse_shard

    check_out_file(png, "--png")  # before anything is stored
    sh = parse_shard(shard)
    st = open_store(store, "r+")  # a clear error when there is no store
    if sh.origin and not json_out:
        console.print(sh.describe(), highlight=False)
    with make_progress(disable=quiet or json_out) as progress:
        summary = run_negatives(st, threshold=threshold, top_k=top_k, workers=workers, overwrite=overwrite,
                                progress=progress, shard=sh)
    if not summary.complete:
        from ..render import report_unfinished_shard

        report_unfinished_shard(summary, f"scored {summary.scored_images_here} image(s)", "writes the flags",
                                json_out, png=None)
        return
    png.parent.mkdir(parents=True, exist_ok=True)
    drawn = negatives_png(st, png)
    if json_out:
        from ..render import print_json

        print_json({**summary.as_dict(), "png": str(png) if drawn else None})
        return
    table = Table(title=f"obvious-staining negatives (mean of the {top_k} brightest green pixels >= {threshold:g})")
    table.add_column("")
    table.add_column("count", justify="right")
    for label, key in (("Negative images", "negative_images"), ("  without cells", "without_cells"),
                       ("  scored", "scored_images"), ("  flagged", "flagged_images"),
                       ("cells scored", "scored_cells"), ("cells flagged", "flagged_cells"),
                       ("skipped (problems)", "n_problems")):
        table.add_row(label, f"{getattr(summary, key):,}")
    console.print(table)
    if summary.problems:
        from ..render import problems_table

        console.print(problems_table(summary.problems))
    if drawn:
        console.print(f"{drawn} cell(s) drawn in {png}")
