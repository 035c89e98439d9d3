"""hpa submit: write the Kaggle submission from stored predictions (--out), or check one (--check)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..options import JsonOpt, QuietOpt, StoreOpt, WorkersOpt


def command(
    check: Annotated[
        Path | None, typer.Option("--check", help="Validate this submission CSV (header, triples, masks, IDs).")
    ] = None,
    images: Annotated[
        Path | None,
        typer.Option("--images", help="With --check: CSV with the expected IDs (e.g. sample_submission.csv)."),
    ] = None,
    max_problems: Annotated[int, typer.Option("--max-problems", min=1, help="Show at most this many problems.")] = 50,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Write the submission CSV from the store's predictions (checked first)."),
    ] = None,
    store: StoreOpt = Path("hpa.zarr"),
    predictions: Annotated[
        str, typer.Option("--predictions", "-p", help="With --out: the stored predictions (`hpa predict --name`).")
    ] = "default",
    min_conf: Annotated[
        float,
        typer.Option("--min-conf", min=0.0, max=1.0, help="With --out: one triple per class with confidence >= this."),
    ] = 0.0,
    classes: Annotated[
        str | None, typer.Option("--classes", help="With --out: only these classes, e.g. 0,1,11 (default all 19).")
    ] = None,
    split: Annotated[str, typer.Option("--split", help="With --out: images to submit: test, dev, train or all.")] = "test",
    workers: WorkersOpt = 2,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Write a Kaggle submission from the stored cell predictions (--out), or validate one (--check)."""
    from ...errors import InputError

    if check is None and out is None:
        raise InputError("nothing to do: give --out FILE (write from the store) or --check FILE")
    if out is not None:
        _run_write(out, store, predictions, min_conf, classes, split, workers, quiet, json_out)
    if check is not None:
        _run_check(check, images, max_problems)


def _run_write(out: Path, store: Path, predictions: str, min_conf: float, classes: str | None, split: str,
               workers: int, quiet: bool, json_out: bool = False) -> None:
    from ...evaluate.write import parse_classes, write_submission
    from ...outpaths import check_out_file
    from ...progress import console, make_progress
    from ...store import open_store

    check_out_file(out, "--out")
    st = open_store(store, "r")
    with make_progress(transient=True, disable=quiet or json_out) as progress:
        s = write_submission(st, predictions=predictions, out=out, min_conf=min_conf, classes=parse_classes(classes),
                             split=split, workers=workers, progress=progress)
    if json_out:
        from ..render import print_json

        print_json(s)
        return
    console.print(
        f"[green]wrote[/] {out}: {s.images} image(s) ({s.images_without_cells} without cells), {s.cells:,} cell(s), "
        f"{s.triples:,} triple(s), {s.bytes / 1e6:.1f} MB in {s.seconds:.1f} s; passed the submission check",
        highlight=False,
    )


def _run_check(path: Path, images: Path | None, max_problems: int) -> None:
    """The --check path: print a report; exit 1 when the file has problems."""
    from rich.table import Table

    from ...evaluate.submission import check_submission
    from ...progress import console

    report = check_submission(path, images=images, max_problems=max_problems)
    summary = (
        f"{report.n_rows} row(s), {report.n_triples} triple(s)"
        + (f", {report.n_empty} with empty masks (ignored by the metric)" if report.n_empty else "")
        + (f"; image list: {report.n_listed} ID(s)" if report.n_listed is not None else "")
    )
    if report.ok:
        console.print(f"[green]ok[/] {path}: {summary}", highlight=False)
        return
    table = Table(title=f"{report.problems.count} problem(s) in {path}", title_style="bold red")
    table.add_column("line", justify="right")
    table.add_column("ID")
    table.add_column("problem", overflow="fold")
    for p in report.problems.items:
        table.add_row("" if p.line is None else str(p.line), p.image_id or "", p.message)
    if report.problems.count > len(report.problems.items):
        table.add_row("", "...", f"{report.problems.count - len(report.problems.items)} more")
    console.print(table)
    console.print(f"[bold red]not ready to submit:[/] {path}: {summary}", highlight=False)
    from ...errors import EXIT_PROBLEMS

    raise typer.Exit(EXIT_PROBLEMS)
