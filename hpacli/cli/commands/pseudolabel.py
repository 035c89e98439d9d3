"""hpa pseudolabel: out-of-fold cell pseudo-labels and embeddings from the image-level models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..options import BatchOpt, DeviceOpt, JsonOpt, OverwriteOpt, QuietOpt, ShardOpt, StoreOpt, WorkersOpt


def command(
    models: Annotated[
        list[str],
        typer.Option(
            "--models", "-m",
            help="Image-model checkpoints, one per fold: a glob ('runs/image/fold*/best.pt'), paths, or "
                 "both (repeat the option or separate with commas).",
        ),
    ],
    store: StoreOpt = Path("hpa.zarr"),
    run: Annotated[str, typer.Option("--run", "-r", help="Name of the pseudo-label run in the store.")] = "default",
    views: Annotated[
        str, typer.Option("--views", help="Test-time views, comma-separated (id, vflip, hflip, rot90, rot180, ...).")
    ] = "id,vflip,hflip,rot90",
    folds: Annotated[str, typer.Option("--folds", help="The image folds the models were trained on.")] = "default",
    keep_duplicates: Annotated[
        bool, typer.Option("--keep-duplicates", help="Also label the 2nd, 3rd... member of each duplicate group.")
    ] = False,
    shard: ShardOpt = None, device: DeviceOpt = "auto", batch_size: BatchOpt = 16, workers: WorkersOpt = 2,
    overwrite: OverwriteOpt = False, quiet: QuietOpt = False, json_out: JsonOpt = False,
) -> None:
    """Label every cell of the validation images of each model's fold (out of fold).

    Crops: the cell's bbox with other cells zeroed, at the image model's scale, tiled to
    fill its input; sigmoid and embedding averaged over the views. Resumable; run
    `--shard i/n` in n processes (or on n GPUs) at once to split the work.
    """
    from rich.table import Table

    from ...label.pseudolabel import run_pseudolabel
    from ...progress import console, make_progress
    from ...store import open_store, parse_shard

    view_list = tuple(v.strip() for v in views.split(",") if v.strip())
    st = open_store(store, "r+")  # never create a store here
    with make_progress(disable=quiet or json_out) as progress:
        summary = run_pseudolabel(
            st, models, run=run, shard=parse_shard(shard), batch_size=batch_size, device=device, workers=workers,
            views=view_list, skip_duplicates=not keep_duplicates, folds=folds, overwrite=overwrite,
            progress=progress,
        )
    if json_out:
        from ..render import print_json

        print_json(summary)
        return
    table = Table(title=f"pseudo-labels {run!r}", show_header=False)
    table.add_row("cells labelled now", f"{summary.cells_labelled:,}")
    table.add_row("cells with an out-of-fold model", f"{summary.cells_assigned:,} of {summary.cells_total:,}")
    table.add_row("blocks done now", f"{summary.blocks_done} of {summary.blocks_total}")
    table.add_row("duplicate images skipped", str(summary.skipped_duplicate_images))
    table.add_row("device", summary.device)
    table.add_row("status", "[green]complete[/]" if summary.complete else "[yellow]other shards still to run[/]")
    console.print(table)
    if summary.problems:
        console.print(f"[yellow]skipped {summary.cells_skipped} cell(s) of {len(summary.problems)} unreadable "
                      f"image(s)[/] (listed in the run's record, `hpa info`):")
        for p in summary.problems[:10]:
            console.print(f"  {p}", highlight=False)
    if summary.folds_without_images:
        console.print(
            f"[yellow]warning:[/] no cells in the validation images of fold(s) "
            f"{', '.join(map(str, summary.folds_without_images))}"
        )
