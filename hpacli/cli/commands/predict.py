"""hpa predict: per-cell probabilities from the cell models (ensemble, TTA, blend, negative rule)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ...registry import completer
from ..options import (
    BatchOpt,
    BlockSizeOpt,
    DeviceOpt,
    JsonOpt,
    OverwriteOpt,
    PluginOptionsOpt,
    QuietOpt,
    ShardOpt,
    StoreOpt,
    WorkersOpt,
)


def command(
    models: Annotated[
        list[str] | None,
        typer.Option(
            "--models", "-m",
            help="Cell-model checkpoints (hpa train-cell), averaged: a glob ('runs/cell/fold*/best.pt'), paths, "
                 "or both (repeat the option or separate with commas).",
        ),
    ] = None,
    store: StoreOpt = Path("hpa.zarr"),
    images: Annotated[
        Path | None,
        typer.Option("--images", help="First register this folder's images (flat {ID}_red.png... or a Kaggle root's "
                                      "test/) as test images; the store is created when missing."),
    ] = None,
    image_model: Annotated[
        str | None,
        typer.Option("--image-model", help="An image-level model (hpa train-image) to blend in, or several "
                                           "(a glob or commas: averaged, e.g. every fold's); alone, it predicts."),
    ] = None,
    blend: Annotated[
        float, typer.Option("--blend", min=0.0, max=1.0, help="Weight of --image-model: p = (1-w) cells + w image.")
    ] = 0.0,
    tta: Annotated[
        str, typer.Option("--tta", help="Test-time views, comma-separated: id, hflip, vflip, rot90, rot180, rot270, "
                                        "transpose, antitranspose, zoomin, zoomout, shift.")
    ] = "id,hflip,vflip,rot90",
    negative: Annotated[
        str, typer.Option("--negative", help="Negative class: max (1 - max of the others), independence "
                                             "(prod of 1 - p), or model (the models' own output).")
    ] = "max",
    name: Annotated[str, typer.Option("--name", "-n", help="Name of the predictions in the store.")] = "default",
    split: Annotated[str, typer.Option("--split", help="Images whose cells to predict: test, dev, train or all; "
                                                         "several joined by commas (dev,test).")] = "test",
    export: Annotated[
        Path | None, typer.Option("--export", help="Also write the per-cell table: .csv, or .parquet (needs pyarrow: "
                                                 "`pipx inject hpacli pyarrow`).")
    ] = None,
    overlays: Annotated[int, typer.Option("--overlays", min=0, help="Write overlay PNGs with top labels for N images.")] = 0,
    overlay_dir: Annotated[
        Path | None, typer.Option("--overlay-dir", help="Folder for --overlays (default: next to the store).")
    ] = None,
    segmenter: Annotated[
        str | None, typer.Option("--segmenter", help="For images not segmented yet (default: the store's segmenter, "
                                                     "else classical).", autocompletion=completer("segmenter"))
    ] = None,
    option: PluginOptionsOpt = None,
    crop_size: Annotated[
        int | None, typer.Option("--crop-size", min=8, help="Cell-model input side, for checkpoints that do not say.")
    ] = None,
    shard: ShardOpt = None, device: DeviceOpt = "auto", batch_size: BatchOpt = 16, workers: WorkersOpt = 2,
    block_size: BlockSizeOpt = None,
    overwrite: OverwriteOpt = False, quiet: QuietOpt = False, json_out: JsonOpt = False,
) -> None:
    """Predict every cell: segment new images, run the cell models with test-time views, store the probabilities.

    Resumable; run `--shard i/n` in n processes (or on n GPUs) at once to split the work.
    Then `hpa submit --out submission.csv` writes the Kaggle file.
    """

    from ...errors import InputError
    from ...predict.stage import ingest_folder, run_predict
    from ...progress import console, make_progress
    from ...store import open_store, parse_shard
    from ..plugin_options import parse_options

    if not models and image_model is None:
        raise InputError("no models given; pass --models 'runs/cell/fold*/best.pt' (and/or --image-model)")
    sh = parse_shard(shard)
    if images is not None and sh.count > 1:
        raise InputError("--images with --shard: register the images once first (`hpa ingest`, or `hpa predict "
                         "--images` without --shard), then run the shards")
    from ...outpaths import check_out_dir, check_out_file

    # output paths are checked before anything is registered, deleted or computed
    if export is not None:
        from ...predict.export import export_format

        check_out_file(export, "--export")
        export_format(export)  # an unknown extension or a missing pyarrow fails now, not after predicting
    if overlays or overlay_dir is not None:
        check_out_dir(overlay_dir or Path(store).parent / f"{Path(store).name}-predict-overlays", "--overlay-dir")
    # without --images the store must exist; with it, the store is created when missing
    st = open_store(store, "a" if images is not None else "r+")
    if sh.origin and not json_out:
        console.print(sh.describe(), highlight=False)
    from ...launch import device_for_process

    device = device_for_process(device)
    with make_progress(disable=quiet or json_out) as progress:
        if images is not None:
            report = ingest_folder(st, images, workers=max(1, workers), progress=progress)
            if report.problems and not json_out:
                console.print(f"[yellow]skipped {len(report.problems)} image(s) of {images}[/] (see `hpa info`)")
        summary = run_predict(
            st, models or [], name=name, image_model=str(image_model) if image_model else None, blend=blend, tta=tta,
            negative=negative, shard=sh, batch_size=batch_size, device=device, workers=workers, progress=progress,
            split=split, segmenter=segmenter, segmenter_kw=parse_options(option) or None, crop_size=crop_size,
            overwrite=overwrite, **({} if block_size is None else {"block": block_size}),
        )
    if not json_out:
        _report(summary, split)
    extra: dict = {}
    if not summary.complete and (export or overlays):
        if not json_out:
            console.print("[yellow]exports skipped until every shard is done[/]")
    else:
        if export is not None:
            from ...predict.export import export_table

            n = export_table(st, export, predictions=name)
            extra["export"] = {"path": str(export), "cells": n}
            if not json_out:
                console.print(f"[green]wrote[/] {export}: {n:,} cell(s)", highlight=False)
        if overlays:
            from ...predict.export import write_overlays

            folder = overlay_dir or st.path.parent / f"{st.path.name}-predict-overlays"
            paths = write_overlays(st, folder, predictions=name, n=overlays)
            extra["overlays"] = [str(x) for x in paths]
            if not json_out:
                console.print(f"[green]wrote[/] {len(paths)} overlay PNG(s) to {folder}", highlight=False)
    if json_out:
        from ..render import print_json

        print_json({**summary.as_dict(), **extra})


def _report(summary, split: str) -> None:
    from rich.table import Table

    from ...progress import console

    table = Table(title=f"predictions {summary.name!r}", show_header=False)
    if summary.images_segmented:
        table.add_row("images segmented now", f"{summary.images_segmented:,}")
    table.add_row("cells predicted now", f"{summary.cells_predicted:,}")
    if summary.cells_carried:
        table.add_row("cells kept from before", f"{summary.cells_carried:,}")
    table.add_row(f"cells of the {split} images", f"{summary.cells_selected:,} of {summary.cells_total:,}")
    table.add_row("blocks done now", f"{summary.blocks_done} of {summary.blocks_total}")
    table.add_row("device", summary.device)
    table.add_row("status", "[green]complete[/]" if summary.complete else "[yellow]other shards still to run[/]")
    console.print(table)
    if summary.problems:
        console.print(f"[yellow]skipped {summary.cells_skipped} cell(s) of {len(summary.problems)} unreadable image(s):[/]")
        for p in summary.problems[:10]:
            console.print(f"  {p}", highlight=False)
