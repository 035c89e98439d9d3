"""hpa submit: check a submission CSV before upload (writing one from the store comes later)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def command(
    check: Annotated[
        Path | None, typer.Option("--check", help="Validate this submission CSV (header, triples, masks, IDs).")
    ] = None,
    images: Annotated[
        Path | None,
        typer.Option("--images", help="With --check: CSV with the expected IDs (e.g. sample_submission.csv)."),
    ] = None,
    max_problems: Annotated[int, typer.Option("--max-problems", min=1, help="Show at most this many problems.")] = 50,
) -> None:
    """Validate a Kaggle submission CSV: header, every triple, masks at the stated size, IDs."""
    from ...errors import InputError

    if check is None:
        raise InputError("nothing to do: give --check FILE")
    _run_check(check, images, max_problems)


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
    raise typer.Exit(1)
