"""hpa dedup: find near-duplicate images (pHash of R, G, B) and store duplicate groups."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..options import JsonOpt, OverwriteOpt, QuietOpt, ShardOpt, StoreOpt, WorkersOpt


def command(
    store: StoreOpt = Path("hpa.zarr"),
    threshold: Annotated[
        int, typer.Option("--threshold", "-t", min=0, max=63,
                          help="A pair is a duplicate when the Hamming distance is <= this in R, G and B.")
    ] = 12,
    source: Annotated[
        str, typer.Option("--source", help="Pixels to hash: auto (the pixel cache when present), cache, png.")
    ] = "auto",
    method: Annotated[
        str, typer.Option("--method", help="Pair search: auto, index (multi-index hashing), brute (all pairs).")
    ] = "auto",
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="CSV of the pairs; a PNG of a few pairs is written beside "
                                  "it. Default: <store>-duplicates.csv beside the store.")
    ] = None,
    workers: WorkersOpt = 2,
    shard: ShardOpt = None,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Hash every image (resumable) and store duplicate groups; folds keep each group in one fold.

    `--shard i/n` in n processes at once splits the hashing; the last to finish finds the pairs and groups."""
    from rich.table import Table

    from ...errors import InputError
    from ...outpaths import check_out_file
    from ...prep.dedup import pairs_frame, pairs_png, run_dedup
    from ...progress import console, make_progress
    from ...store import open_store, parse_shard
    from ...store.dedup import read_groups, read_pairs

    open_store(store, "r")  # a clear error when there is no store (never create one here)
    if out is None:
        out = store.parent / f"{store.name}-duplicates.csv"
    if out.suffix.lower() == ".png":
        raise InputError(f"--out {out}: give the CSV's name (the PNG of pairs is written beside it as .png)")
    check_out_file(out, "--out")  # before anything is stored
    check_out_file(out.with_suffix(".png"), "--out (the PNG beside it)")
    sh = parse_shard(shard)
    st = open_store(store, "r+")
    if sh.origin and not json_out:
        console.print(sh.describe(), highlight=False)
    with make_progress(disable=quiet or json_out) as progress:
        summary = run_dedup(st, threshold=threshold, source=source, method=method, workers=workers,
                            overwrite=overwrite, progress=progress, shard=sh)
    if not summary.complete:
        from ..render import report_unfinished_shard

        report_unfinished_shard(summary, f"hashed {summary.hashed} image(s)", f"finds the pairs and writes {out}",
                                json_out, csv=None, png=None)
        return
    pairs, dist = read_pairs(st)
    group = read_groups(st, require_all=False)
    png = out.with_suffix(".png")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        pairs_frame(st, pairs, dist, group).to_csv(out, index=False)
        drawn = pairs_png(st, pairs, dist, png)
    except OSError as exc:  # checked above; a full disk or a race can still fail here
        raise InputError(f"the duplicate groups are stored, but writing {out} failed: {exc.strerror or exc}; "
                         f"rerun `hpa dedup` with another --out") from None

    if json_out:
        from ..render import print_json

        print_json({**summary.as_dict(), "csv": str(out), "png": str(png) if drawn else None})
        return
    table = Table(title=f"duplicates (distance <= {threshold} in R, G and B)")
    table.add_column("")
    table.add_column("count", justify="right")
    for label, key in (("images", "n_images"), ("unreadable (skipped)", "n_unreadable"),
                       ("duplicate pairs", "n_pairs"), ("duplicate groups", "n_groups"),
                       ("images in groups", "n_images_in_groups"), ("largest group", "largest_group"),
                       ("train-test pairs", "train_test_pairs"),
                       ("cross-source pairs", "cross_source_pairs")):
        table.add_row(label, f"{getattr(summary, key):,}")
    console.print(table)
    console.print(f"hashed from: {summary.source}")
    if summary.problems:
        from ..render import problems_table

        console.print(problems_table(summary.problems))
    console.print(f"[green]pairs[/] written to {out}" + (f"; {drawn} pair(s) drawn in {png}" if drawn else ""))
