"""hpa train-image: train the image-level model of one fold (the seed's recipe by default)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ...registry import completer
from ..options import (
    AccumOpt,
    DeviceOpt,
    EpochOffsetOpt,
    EpochsOpt,
    JsonOpt,
    LrMultOpt,
    PluginOptionsLongOpt,
    QuietOpt,
    ScheduleOpt,
    SeedOpt,
    StoreOpt,
    WorkersOpt,
)


def command(
    store: StoreOpt = Path("hpa.zarr"),
    fold: Annotated[int, typer.Option("--fold", "-f", min=0, help="Validation fold; the others train.")] = 0,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Run folder (default runs/image/fold<F>).")] = None,
    backbone: Annotated[
        str, typer.Option("--backbone", help="densenet121-hpa (the seed's) or any registered backbone / timm name.",
                          autocompletion=completer("backbone"))
    ] = "densenet121-hpa",
    option: PluginOptionsLongOpt = None,
    img_size: Annotated[int, typer.Option("--img-size", min=32, help="Training image size (pixels).")] = 1024,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Images per micro-batch.")] = 8,
    accum: AccumOpt = 200,
    epochs: EpochsOpt = 10,
    lr_mult: LrMultOpt = 4.0,
    schedule: ScheduleOpt = "adam10",
    epoch_offset: EpochOffsetOpt = 0,
    loss: Annotated[
        str, typer.Option("--loss", help="Training loss (`hpa plugins --list losses`).")
    ] = "focal-symmetric-lovasz-hardlog",
    init_from: Annotated[
        Path | None,
        typer.Option("--init-from", help="Start from weights: an hpacli checkpoint, a state_dict or a bestfitting final.pth."),
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out exactly where it stopped.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Discard the run in --out and start over.")] = False,
    eval_at_start: Annotated[bool, typer.Option("--eval-at-start", help="Validate before the first step.")] = False,
    best_metric: Annotated[str, typer.Option("--best-metric", help="map or loss: which validation result picks best.pt.")] = "map",
    negatives: Annotated[
        str, typer.Option("--negatives", help="obvious: Negative images only when flagged by `hpa negatives`; all: every one.")
    ] = "obvious",
    max_steps: Annotated[
        int | None, typer.Option("--max-steps", min=1, help="Stop after this many optimizer steps (then validate).")
    ] = None,
    save_minutes: Annotated[
        float, typer.Option("--save-minutes", help="Also save last.pt every this many minutes within an epoch.")
    ] = 10.0,
    amp: Annotated[bool, typer.Option("--amp/--no-amp", help="bf16 autocast on GPUs that support it.")] = True,
    source: Annotated[str, typer.Option("--source", help="Pixels from: auto (cache when large enough), cache, png.")] = "auto",
    device: DeviceOpt = "auto",
    workers: WorkersOpt = 2,
    seed: SeedOpt = 0,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Train the image-level classifier on one fold (checkpoints last.pt/best.pt, log.csv).

    Multi-GPU: `torchrun --nproc_per_node N -m hpacli.cli.app train-image ...` (same options).
    """
    from ...errors import HpaError
    from ...store import open_store
    from ...train.image import run_train_image
    from ..plugin_options import parse_options
    from ..training import is_rank0, report_trained, training_display

    if best_metric not in ("map", "loss"):
        raise HpaError(f"--best-metric must be map or loss, not {best_metric!r}")
    out = out or Path("runs/image") / f"fold{fold}"
    st = open_store(store, "r")

    with training_display(quiet or json_out) as (progress, log):
        summary = run_train_image(
            st, fold, out, backbone=backbone, backbone_options=parse_options(option), img_size=img_size,
            negatives=negatives, init_from=init_from,
            source=source, progress=progress, log=log,
            epochs=epochs, batch_size=batch_size, accum=accum, lr_mult=lr_mult, schedule=schedule,
            epoch_offset=epoch_offset, loss=loss, device=device, workers=workers, amp=amp, eval_at_start=eval_at_start,
            best_metric=best_metric, max_steps=max_steps, seed=seed, resume=resume, overwrite=overwrite,
            save_minutes=save_minutes,
        )
    if json_out:
        from ..render import print_json

        if is_rank0():
            print_json(summary)
        return
    report_trained(backbone, fold, summary, "images", out)
