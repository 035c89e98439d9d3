"""hpa ingest: register a dataset's images in the store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..options import JsonOpt, QuietOpt, StoreOpt, WorkersOpt


def command(
    root: Annotated[Path, typer.Argument(help="Dataset root (Kaggle layout: train.csv, train/, test/).")],
    store: StoreOpt = Path("hpa.zarr"),
    layout: Annotated[
        str, typer.Option("--layout", help="kaggle (train.csv + train/ + test/) or public (--csv with ID,Label_idx).")
    ] = "kaggle",
    csv: Annotated[Path | None, typer.Option("--csv", help="Public layout: the CSV with ID and Label_idx.")] = None,
    no_test: Annotated[bool, typer.Option("--no-test", help="Kaggle layout: skip the test/ images.")] = False,
    cache_size: Annotated[
        int | None, typer.Option("--cache-size", help="Also store RGBY pixels downscaled to SxS (fast training). "
                                 "Once a store has a cache, every ingest keeps it complete (earlier images are "
                                 "filled in); another size is refused unless --rebuild-cache.")
    ] = None,
    rebuild_cache: Annotated[
        bool, typer.Option("--rebuild-cache", help="Replace the store's pixel cache with one of --cache-size "
                           "(every image is read again).")
    ] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Fail on the first bad image instead of skipping it.")] = False,
    workers: WorkersOpt = 2,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Register images (checking every file) in the store; re-running adds only new images."""
    from ...data.ingest import kaggle_candidates, public_candidates, run_ingest
    from ...errors import InputError
    from ...progress import console, make_progress
    from ...store import open_store
    from ..render import problems_table

    if not root.is_dir():
        raise InputError(f"{root} is not a folder")
    if rebuild_cache and cache_size is None:
        raise InputError("--rebuild-cache needs --cache-size (the size of the new cache)")
    if layout == "kaggle":
        candidates = kaggle_candidates(root, include_test=not no_test)
    elif layout == "public":
        candidates = public_candidates(csv or root / "kaggle_2021.csv", root)
    else:
        raise InputError(f"--layout must be kaggle or public, not {layout!r}")
    st = open_store(store, "a")
    params = {"root": str(root.resolve()), "layout": layout, "cache_size": cache_size, "strict": strict,
              "rebuild_cache": rebuild_cache}
    with make_progress(disable=quiet or json_out) as progress:
        report = run_ingest(
            st, candidates, data_root=root, cache_size=cache_size, rebuild_cache=rebuild_cache, strict=strict,
            workers=workers, progress=progress, params=params,
        )
    if json_out:
        from ..render import print_json

        print_json(report)
        return
    if report.problems:
        console.print(problems_table(report.problems))
    console.print(
        f"[green]ingested[/] {report.added} new image(s) into {store} "
        f"({report.skipped_existing} already registered, {report.n_problems} skipped with problems; "
        f"{st.images.n} in the store)"
    )
    if report.cache_size:
        filled = f"; {report.cache_filled} earlier image(s) filled in" if report.cache_filled else ""
        missing = (f"; [yellow]{report.cache_missing} image(s) without cached pixels[/] (readers use their PNGs)"
                   if report.cache_missing else "")
        console.print(f"pixel cache: {report.cache_size}px{filled}{missing}")
