"""hpa segment: label the cells of every registered image (resumable, shardable)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ...registry import completer
from ..options import (
    BatchOpt,
    DeviceOpt,
    JsonOpt,
    OverwriteOpt,
    PluginOptionsOpt,
    QuietOpt,
    ShardOpt,
    StoreOpt,
)


def command(
    store: StoreOpt = Path("hpa.zarr"),
    segmenter: Annotated[
        str, typer.Option("--segmenter", help="classical (weight-free, default), hpa-unet, or a plugin's name.",
                          autocompletion=completer("segmenter"))
    ] = "classical",
    option: PluginOptionsOpt = None,
    nuclei_model: Annotated[
        Path | None,
        typer.Option("--nuclei-model", help="Alias of -o nuclei_model=PATH (hpa-unet: local dpn_unet_nuclei_v1.pth; "
                                            "or set HPA_NUCLEI_MODEL).", show_default=False),
    ] = None,
    cell_model: Annotated[
        Path | None,
        typer.Option("--cell-model", help="Alias of -o cell_model=PATH (hpa-unet: local dpn_unet_cell_3ch_v1.pth; "
                                          "or set HPA_CELL_MODEL).", show_default=False),
    ] = None,
    shard: ShardOpt = None,
    batch_size: BatchOpt = 4,
    device: DeviceOpt = "auto",
    mask_scale: Annotated[
        float | None,
        typer.Option("--mask-scale", help="Stored mask resolution (default: 0.25 for images >= 1024 px, else 1)."),
    ] = None,
    preview: Annotated[int, typer.Option("--preview", min=0, help="Write outline overlays (PNG) for N images.")] = 0,
    preview_dir: Annotated[
        Path | None, typer.Option("--preview-dir", help="Folder for --preview PNGs (default: next to the store).")
    ] = None,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Segment every registered image not segmented yet: cell and nucleus label images and the cells table.

    The segmenter's own options go with -o, e.g. `--segmenter hpa-unet -o nuclei_model=N.pth
    -o cell_model=C.pth -o postprocess=exact` (`hpa plugins --options segmenter hpa-unet`).
    """
    from ...progress import console, make_progress
    from ...segment.stage import run_segment
    from ...store import open_store, parse_shard
    from ..plugin_options import parse_options
    from ..render import print_json

    options = parse_options(option, {"nuclei_model": str(nuclei_model) if nuclei_model else None,
                                     "cell_model": str(cell_model) if cell_model else None})
    st = open_store(store, "r+")  # never create a store here
    with make_progress(disable=quiet or json_out) as progress:
        out = run_segment(
            st, segmenter=segmenter, shard=parse_shard(shard), batch_size=batch_size, device=device,
            preview=preview, progress=progress, preview_dir=preview_dir, mask_scale=mask_scale,
            overwrite=overwrite, options=options,
        )
    if json_out:
        print_json(out)
        return
    for p in out.problems[:20]:
        console.print(f"[yellow]skipped[/] image {p['image']}: {p['problem']}", highlight=False)
    rate = f", {out.images_per_s:.2f} img/s" if out.images_per_s else ""
    console.print(
        f"[green]segmented[/] {out.processed} image(s) ({out.cells_found} cells{rate}); "
        f"{out.segmented}/{out.images} images done"
        + (f"; cells table: {out.cells_table_rows} cells" if out.cells_table_rows is not None else "")
        + (f"; previews in {out.preview_dir}" if out.preview_dir else ""),
        highlight=False,
    )
