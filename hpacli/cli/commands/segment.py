"""hpa segment: label the cells of every registered image (resumable, shardable)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..options import BatchOpt, BlockSizeOpt, DeviceOpt, OverwriteOpt, QuietOpt, ShardOpt, StoreOpt


def command(
    store: StoreOpt = Path("hpa.zarr"),
    segmenter: Annotated[
        str, typer.Option("--segmenter", help="classical (weight-free, default), hpa-unet, or a plugin's name.")
    ] = "classical",
    shard: ShardOpt = None,
    batch_size: BatchOpt = 4,
    device: DeviceOpt = "auto",
    nuclei_model: Annotated[
        Path | None,
        typer.Option("--nuclei-model", envvar="HPA_NUCLEI_MODEL",
                     help="hpa-unet: local dpn_unet_nuclei_v1.pth (never downloaded)."),
    ] = None,
    cell_model: Annotated[
        Path | None,
        typer.Option("--cell-model", envvar="HPA_CELL_MODEL",
                     help="hpa-unet: local dpn_unet_cell_3ch_v1.pth (never downloaded)."),
    ] = None,
    postprocess: Annotated[
        str, typer.Option("--postprocess", help="hpa-unet: fast (network scale, default) or exact (upstream, full size).")
    ] = "fast",
    mask_scale: Annotated[
        float | None,
        typer.Option("--mask-scale", help="Stored mask resolution (default: 0.25 for images >= 1024 px, else 1)."),
    ] = None,
    preview: Annotated[int, typer.Option("--preview", min=0, help="Write outline overlays (PNG) for N images.")] = 0,
    preview_dir: Annotated[
        Path | None, typer.Option("--preview-dir", help="Folder for --preview PNGs (default: next to the store).")
    ] = None,
    block_size: BlockSizeOpt = None,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Segment every registered image not segmented yet: cell and nucleus label images and the cells table."""
    from ...launch import device_for_process
    from ...progress import console, make_progress
    from ...segment.stage import run_segment
    from ...store import open_store, parse_shard

    sh = parse_shard(shard)
    st = open_store(store, "r+")  # never create a store here
    if sh.origin:
        console.print(sh.describe(), highlight=False)
    kw = {} if block_size is None else {"block_size": block_size}
    if segmenter == "hpa-unet":
        kw.update({"nuclei_model": nuclei_model, "cell_model": cell_model, "postprocess": postprocess})
    with make_progress(disable=quiet) as progress:
        out = run_segment(
            st, segmenter=segmenter, shard=sh, batch_size=batch_size, device=device_for_process(device),
            preview=preview, progress=progress, preview_dir=preview_dir, mask_scale=mask_scale,
            overwrite=overwrite, **kw,
        )
    for p in out["problems"][:20]:
        console.print(f"[yellow]skipped[/] image {p['image']}: {p['problem']}", highlight=False)
    rate = f", {out['images_per_s']:.2f} img/s" if out["images_per_s"] else ""
    console.print(
        f"[green]segmented[/] {out['processed']} image(s) ({out['cells_found']} cells{rate}); "
        f"{out['segmented']}/{out['images']} images done"
        + (f"; cells table: {out['cells_table_rows']} cells" if out["cells_table_rows"] is not None else "")
        + (f"; previews in {out['preview_dir']}" if out["preview_dir"] else ""),
        highlight=False,
    )
