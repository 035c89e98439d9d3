"""hpa fold: leak-free stratified image folds, or cell folds for label de-noising (--cells)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..options import JsonOpt, SeedOpt, StoreOpt


def command(
    store: StoreOpt = Path("hpa.zarr"),
    n_splits: Annotated[
        int | None, typer.Option("--n-splits", "-k", min=2, max=100, help="Number of folds (default 5; 3 with --cells).")
    ] = None,
    seed: SeedOpt = 42,
    name: Annotated[str, typer.Option("--name", help="Name of the fold set (several can be stored).")] = "default",
    cells: Annotated[
        bool, typer.Option("--cells", help="Cell folds for de-noising: each image's cells split evenly over folds.")
    ] = False,
    drop_duplicates: Annotated[
        bool, typer.Option("--drop-duplicates", help="Keep one image per duplicate group (as the original did) "
                                                     "instead of keeping each group inside one fold.")
    ] = False,
    ignore_duplicates: Annotated[
        bool, typer.Option("--ignore-duplicates", help="Do not use `hpa dedup` groups (folds may leak).")
    ] = False,
    negatives: Annotated[
        str, typer.Option("--negatives", help="all, or obvious: keep only Negative images flagged by `hpa negatives`.")
    ] = "all",
    json_out: JsonOpt = False,
) -> None:
    """Make folds and store them with their parameters; the same seed gives the same folds."""
    from rich.table import Table

    from ...errors import HpaError
    from ...progress import console
    from ...store import open_store
    from ...store.core import check_name
    from ..render import print_json

    check_name(name, "fold set")
    st = open_store(store, "r+")  # a clear error when there is no store
    if cells:
        if drop_duplicates or ignore_duplicates or negatives != "all":
            raise HpaError("--cells makes cell folds; --drop-duplicates, --ignore-duplicates and --negatives "
                           "apply to image folds only")
        from ...prep.folds import run_cell_folds

        k = n_splits or 3
        summary = run_cell_folds(st, n_splits=k, seed=seed, name=name)
        if json_out:
            print_json(summary)
            return
        table = Table(title=f"cell folds {name!r} ({k} folds, seed {seed})")
        table.add_column("")
        for f in range(k):
            table.add_column(f"fold {f}", justify="right")
        table.add_row("cells", *(f"{c:,}" for c in summary.cells_per_fold))
        console.print(table)
        console.print(f"{summary.in_folds:,} of {summary.n_cells:,} cells in folds "
                      f"(test images' cells take none); {summary.single_cell_images:,} single-cell image(s) "
                      "placed by a seeded draw")
        return
    if drop_duplicates and ignore_duplicates:
        raise HpaError("--drop-duplicates and --ignore-duplicates exclude each other")
    from ...prep.folds import run_fold

    k = n_splits or 5
    duplicates = "drop" if drop_duplicates else "ignore" if ignore_duplicates else "group"
    summary = run_fold(st, n_splits=k, seed=seed, name=name, duplicates=duplicates, negatives=negatives)
    if json_out:
        print_json(summary)
        return
    table = Table(title=f"image folds {name!r}: label distribution ({k} folds, seed {seed}, duplicates: {duplicates})")
    rows = summary.distribution
    for col in rows[0]:
        table.add_column(col, justify="left" if col == "class" else "right")
    for row in rows:
        table.add_row(*(f"{v:,}" if isinstance(v, int) else str(v) for v in row.values()))
    console.print(table)
    notes = [f"{summary.in_folds:,} of {summary.n_images:,} images in folds",
             f"{summary.test_or_unlabelled:,} test/unlabelled"]
    if summary.dropped_duplicates:
        notes.append(f"{summary.dropped_duplicates:,} duplicate(s) dropped")
    if summary.excluded_negatives:
        notes.append(f"{summary.excluded_negatives:,} Negative image(s) without obvious staining left out")
    console.print("; ".join(notes))
