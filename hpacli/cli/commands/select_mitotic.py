"""hpa select-mitotic: cells the de-noised labels add to a class, for review by eye."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..options import JsonOpt, QuietOpt, StoreOpt


def command(
    store: StoreOpt = Path("hpa.zarr"),
    run: Annotated[str, typer.Option("--run", "-r", help="The de-noised pseudo-label run.")] = "default",
    cls: Annotated[int, typer.Option("--class", min=0, max=18, help="Class index (11 = mitotic spindle).")] = 11,
    init_below: Annotated[float, typer.Option("--init-below", help="Only cells with Y_init below this.")] = 0.4,
    opt_frac: Annotated[float, typer.Option("--opt-frac", help="Y_opt ≥ this × the fold's max.")] = 0.92,
    top: Annotated[int | None, typer.Option("--top", min=0, help="Instead: the K highest Y_opt per fold.")] = None,
    neighbours: Annotated[int | None, typer.Option("--neighbours", min=1, help="Also cells among the K nearest "
                                                   "other cells of known positives (at most the graph's k - 1)...")] = None,
    min_hits: Annotated[int, typer.Option("--min-hits", min=1, help="...at least this many times.")] = 3,
    known: Annotated[str, typer.Option("--known", help="Known positives: y-init (Y_init ≥ 0.5, the seed's) or "
                                       "outliers (in each image labelled with the class, the cells least like "
                                       "the rest of the image; these are selected too).")] = "y-init",
    per_image: Annotated[int, typer.Option("--per-image", min=1, help="Outlier cells taken per labelled "
                                           "image with --known outliers.")] = 1,
    name: Annotated[str, typer.Option("--name", help="Name of the selection in the store.")] = "mitotic",
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the CSV and the PNG gallery.")] = Path("."),
    accept: Annotated[str | None, typer.Option("--accept", metavar="CSV|review",
                                               help="Make the final selection: from a reviewed CSV (rows kept = "
                                               "accepted, or its 'decision' column), or 'review' = the cells "
                                               "accepted in `hpa review`.")] = None,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Select cells with Y_init below the bound and a high de-noised Y_opt; CSV + gallery to review."""
    from ...label.denoise import run_accept, run_select
    from ...progress import console
    from ...store import open_store
    from ..render import print_json

    st = open_store(store, "r+")  # never create a store here
    if accept is not None:
        from_review = accept == "review"
        n = run_accept(st, run, None if from_review else Path(accept), name)
        if json_out:
            print_json(n)
            return
        console.print(f"accepted {n.accepted} cell(s) from {'hpa review' if from_review else accept} "
                      f"as selection {name!r} of {run!r}")
        return
    res = run_select(st, run, cls, init_below, opt_frac, top, neighbours, min_hits, name=name, out_dir=out,
                     known=known, per_image=per_image)
    if json_out:
        print_json(res)
        return
    c = res.counts
    console.print(f"rule: {res.rule}: {len(res.cells)} cell(s) selected")
    console.print(f"  threshold rule picks {c['threshold']}, cells under the bound {c['below_bound']}"
                  + (f", top rule {c['top']}" if c.get("top") is not None else "")
                  + (f", neighbour rule {c['neighbours']}" if c.get("neighbours") is not None else "")
                  + (f", known positives {c['known']}" if c.get("known") is not None else ""))
    if c["threshold"] == 0 and top is None:
        console.print("[yellow]the threshold rule selected nothing (a lone maximum?); try --top K[/]")
    if res.csv:
        console.print(f"CSV: {res.csv}")
    if res.gallery:
        console.print(f"gallery: {res.gallery}")
