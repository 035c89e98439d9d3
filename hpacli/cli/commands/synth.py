"""hpa synth: write a synthetic HPA dataset with cell-level truth (the pipeline's yardstick)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..options import JsonOpt, QuietOpt, SeedOpt, WorkersOpt


def command(
    out: Annotated[Path, typer.Argument(help="Folder to write the dataset to (Kaggle layout plus truth).")],
    n_images: Annotated[int, typer.Option("--n-images", "-n", min=1, help="Train images.")] = 200,
    size: Annotated[int, typer.Option("--size", help="Image side in pixels (64 to 4096; the HPA sizes are 1728, 2048 and 3072).")] = 256,
    test_images: Annotated[
        int | None, typer.Option("--test-images", min=0, help="Test images (default: a quarter of --n-images).")
    ] = None,
    dev_images: Annotated[
        int | None,
        typer.Option("--dev-images", min=0, help="Development images, unlabelled like test, with dev_truth.csv: "
                     "make choices on these, score test once (default: as many as test images)."),
    ] = None,
    bits: Annotated[int, typer.Option("--bits", help="PNG bit depth: 8 or 16.")] = 8,
    seed: SeedOpt = 0,
    noise: Annotated[float, typer.Option("--noise", help="Noise level (std at full intensity), 0 to 1.")] = 0.05,
    variability: Annotated[
        float,
        typer.Option("--variability", help="Share of images whose cells differ (single-cell variability), 0 to 1."),
    ] = 0.3,
    force: Annotated[bool, typer.Option("--force", help="Replace a dataset already in OUT.")] = False,
    workers: WorkersOpt = 1,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Write synthetic images whose cells show known patterns, weak image labels, and the cell truth."""
    import time

    from rich.table import Table

    from ...classes import CLASS_NAMES
    from ...data.synth import SynthConfig, run_synth
    from ...progress import console, make_progress

    cfg = SynthConfig(n_images=n_images, size=size, test_images=test_images, dev_images=dev_images, bits=bits,
                      seed=seed, noise=noise, variability=variability)
    t0 = time.perf_counter()
    with make_progress(disable=quiet or json_out) as progress:
        summary = run_synth(out, cfg, force=force, workers=workers, progress=progress)
    took = time.perf_counter() - t0
    if json_out:
        from ..render import print_json

        print_json(summary)
        return
    if not quiet:
        table = Table(title="train set: cells and image labels per class", show_lines=False)
        table.add_column("class", justify="right")
        table.add_column("name")
        table.add_column("cells", justify="right")
        table.add_column("image labels", justify="right")
        for c, name in enumerate(CLASS_NAMES):
            table.add_row(str(c), name, str(summary.cells_per_class[c]), str(summary.train_labels_per_class[c]))
        console.print(table)
    for note in summary.notes:
        console.print(f"[dim]note:[/] {note}")
    console.print(
        f"[green]wrote[/] {summary.n_train} train + {summary.n_dev} dev + {summary.n_test} test images "
        f"({summary.n_cells} cells) "
        f"to {out} in {took:.1f}s; preview: {summary.preview}"
    )
