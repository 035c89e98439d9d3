"""hpa train-cell: train the cell-level model of one fold on soft pseudo-labels (the seed's recipe by default)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ...registry import completer
from ..options import (
    AccumOpt,
    AmpOpt,
    DeviceOpt,
    EpochOffsetOpt,
    EpochsOpt,
    JsonOpt,
    LrMultOpt,
    NoAmpOpt,
    PluginOptionsLongOpt,
    QuietOpt,
    ScheduleOpt,
    SeedOpt,
    StoreOpt,
    WorkersOpt,
)


def command(
    store: StoreOpt = Path("hpa.zarr"),
    fold: Annotated[int, typer.Option("--fold", "-f", min=0, help="Validation fold; cells of the others train.")] = 0,
    labels: Annotated[
        str, typer.Option("--labels", "-l", help="Pseudo-label run (`hpa pseudolabel --run`) giving the soft targets.")
    ] = "default",
    selection: Annotated[
        str | None,
        typer.Option("--selection", help="Reviewed (`hpa review`) or accepted (`hpa select-mitotic ... --accept`) "
                     "selection: its accepted cells get 1 for its class."),
    ] = None,
    targets: Annotated[
        str, typer.Option("--targets", help="soft: the pseudo-labels; denoised: Y_opt of the de-noising stage; "
                          "truth: the store's cell truth (synthetic data; an upper-bound analysis).")
    ] = "soft",
    denoise_run: Annotated[
        str | None, typer.Option("--denoise-run", help="De-noising run holding Y_opt and --selection (default: --labels).")
    ] = None,
    mask_labels: Annotated[
        bool, typer.Option("--mask-labels", help="Zero the target classes a cell's image is not labelled with "
                           "(removes the image model's false positives; not in the original recipe).")
    ] = False,
    mask_keep: Annotated[
        str | None, typer.Option("--mask-keep", help="With --mask-labels: classes left unmasked, comma-separated "
                                 "(e.g. 11: the mitotic spindle, which image labels seldom name).")
    ] = None,
    rescale_in_image: Annotated[
        bool, typer.Option("--rescale-in-image", help="With --mask-labels: divide each labelled class's soft targets "
                           "by their maximum over the image's cells (its most confident cell gets 1; not in the "
                           "original recipe).")
    ] = False,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Run folder (default runs/cell/fold<F>).")] = None,
    init_from: Annotated[
        Path | None,
        typer.Option("--init-from", help="Start from weights, e.g. runs/image/fold0/best.pt (its architecture too)."),
    ] = None,
    backbone: Annotated[
        str | None,
        typer.Option("--backbone", help="Registered backbone / timm name (default: --init-from's, else densenet121-hpa).",
                     autocompletion=completer("backbone")),
    ] = None,
    option: PluginOptionsLongOpt = None,
    img_size: Annotated[int, typer.Option("--img-size", min=16, help="Side of the cell crops fed to the model.")] = 512,
    work_size: Annotated[
        int | None,
        typer.Option("--work-size", min=16, help="Cut crops from the image resized to this side (default: original size)."),
    ] = None,
    fit: Annotated[
        str, typer.Option("--fit", help="resize: squared crop resized to --img-size; pad: kept at --work-size scale, padded.")
    ] = "resize",
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Cells per micro-batch.")] = 32,
    accum: AccumOpt = 4,
    epochs: EpochsOpt = 5,
    lr_mult: LrMultOpt = 4.0,
    schedule: ScheduleOpt = "adam10",
    epoch_offset: EpochOffsetOpt = 0,
    loss: Annotated[
        str, typer.Option("--loss", help="Training loss; soft-* variants use the soft targets (`hpa plugins --list losses`).")
    ] = "soft-focal-symmetric-lovasz-hardlog",
    best_metric: Annotated[
        str, typer.Option("--best-metric", help="Which validation score keeps best.pt: bin_acc (the seed's: "
                          "0.05-bin accuracy against the soft targets), loss, map (against targets >= 0.5), or "
                          "cell_map (an analysis: reads the store's cell truth, synthetic data only).")
    ] = "bin_acc",
    val_cells: Annotated[
        int, typer.Option("--val-cells", min=0, help="Validate on a fixed random sample of this many validation "
                          "cells (0: all of them).")
    ] = 0,
    image_window: Annotated[
        int,
        typer.Option("--image-window", min=0, help="Shuffle cells within windows of this many images (fewer image "
                     "decodes per batch); 0 = all cells shuffled (the seed's)."),
    ] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out exactly where it stopped.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Discard the run in --out and start over.")] = False,
    eval_at_start: Annotated[bool, typer.Option("--eval-at-start", help="Validate before the first step.")] = False,
    max_steps: Annotated[
        int | None, typer.Option("--max-steps", min=1, help="Stop after this many optimizer steps (then validate).")
    ] = None,
    save_minutes: Annotated[
        float, typer.Option("--save-minutes", help="Also save last.pt every this many minutes within an epoch.")
    ] = 10.0,
    amp: AmpOpt = "auto",
    no_amp: NoAmpOpt = False,
    device: DeviceOpt = "auto",
    workers: WorkersOpt = 2,
    seed: SeedOpt = 0,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Train the cell-level classifier on one fold (checkpoints last.pt/best.pt, log.csv).

    Validation each epoch: soft focal loss, accuracy in 0.05-wide bins of the soft label and
    macro AP against the targets; nothing reads cell truth unless --best-metric cell_map or
    --targets truth names it.
    Multi-GPU: `torchrun --nproc_per_node N -m hpacli.cli.app train-cell ...` (same options).
    """
    from ...errors import HpaError
    from ...store import open_store
    from ...train.cell import BEST_METRICS, run_train_cell
    from ...train.cell_data import FITS
    from ...train.cell_targets import TARGET_KINDS
    from ..plugin_options import parse_options
    from ..training import is_rank0, report_trained, training_display

    if best_metric not in BEST_METRICS:
        raise HpaError(f"--best-metric must be one of {', '.join(BEST_METRICS)}, not {best_metric!r}")
    if targets not in TARGET_KINDS:
        raise HpaError(f"--targets must be one of {', '.join(TARGET_KINDS)}, not {targets!r}")
    if fit not in FITS:
        raise HpaError(f"--fit must be one of {', '.join(FITS)}, not {fit!r}")
    from ...train.trainer import AMP_MODES

    if amp not in AMP_MODES:
        raise HpaError(f"--amp must be one of {', '.join(AMP_MODES)}, not {amp!r}")
    out = out or Path("runs/cell") / f"fold{fold}"
    st = open_store(store, "r")

    with training_display(quiet or json_out) as (progress, log):
        summary = run_train_cell(
            st, fold, labels, out, selection=selection, targets=targets, denoise_run=denoise_run, mask_labels=mask_labels,
            mask_keep=_classes(mask_keep), rescale_in_image=rescale_in_image, backbone=backbone, backbone_options=parse_options(option),
            init_from=init_from, img_size=img_size, work_size=work_size, fit=fit, image_window=image_window,
            val_cells=val_cells, progress=progress, log=log,
            epochs=epochs, batch_size=batch_size, accum=accum, lr_mult=lr_mult, schedule=schedule,
            epoch_offset=epoch_offset, loss=loss, device=device, workers=workers, amp="off" if no_amp else amp, eval_at_start=eval_at_start,
            best_metric=best_metric, max_steps=max_steps, seed=seed, resume=resume, overwrite=overwrite,
            save_minutes=save_minutes,
        )
    if json_out:
        from ..render import print_json

        if is_rank0():
            print_json(summary)
        return
    report_trained("cell model", fold, summary, "cells", out)


def _classes(text: str | None) -> tuple[int, ...]:
    """``--mask-keep 11,12`` as class indices (refused in one line when not classes)."""
    from ...classes import parse_labels
    from ...errors import HpaError

    if not text:
        return ()
    try:
        return tuple(parse_labels(text.replace(",", "|")))
    except ValueError as e:
        raise HpaError(f"--mask-keep {text}: {e}") from None
