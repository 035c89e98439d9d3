"""hpa info: what a store holds."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from ..options import JsonOpt, StoreOpt


def _when(stamp: str | None) -> str:
    if not stamp:
        return ""
    try:
        return datetime.fromisoformat(stamp).strftime("%m-%d %H:%M:%S")
    except ValueError:
        return stamp


def _took(rec: dict) -> str:
    try:
        sec = (datetime.fromisoformat(rec["finished"]) - datetime.fromisoformat(rec["started"])).total_seconds()
    except (KeyError, TypeError, ValueError):
        return ""
    return f"{sec:.0f} s" if sec < 120 else f"{sec / 60:.1f} min"


def _short(value, limit: int = 40) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def info_json(st, info: dict) -> dict:
    """`hpa info --json`: the same content as the tables, as plain values."""
    counts: dict = {}
    for k, v in info["counts"].items():
        if k.startswith(" "):  # the per-split rows under "images"
            counts.setdefault("images_by_split", {})[k.strip()] = v
        else:
            counts[k.replace(" ", "_")] = v
    return {
        "store": str(st.path),
        "schema": st.schema_version,
        "counts": counts,
        "bytes": info["bytes"],
        "files": info["files"],
        "stages": info["stages"],
        "tables": info.get("tables", {}),
    }


def command(
    store: StoreOpt = Path("hpa.zarr"),
    full: Annotated[bool, typer.Option("--full", help="Show every stage parameter in full.")] = False,
    check: Annotated[
        bool, typer.Option("--check", help="Look for damage first: lost chunk files, missing or bad stamps. "
                                           "Exit status 2 when there is any.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Show a store's images, cells, stages (time, parameters, status) and size on disk."""
    from rich.table import Table

    from ...store import open_store
    from ...store.summary import summarize
    from ..render import human_bytes, print_json, print_result

    st = open_store(store, "r")
    if check:
        _check(st)
    info = summarize(st)
    if as_json:
        print_json(info_json(st, info))
        return
    head = Table.grid(padding=(0, 2))
    head.add_row("store", str(st.path))
    head.add_row("schema", str(st.schema_version))
    for k, v in info["counts"].items():
        head.add_row(k, str(v))
    head.add_row("on disk", f"{human_bytes(info['bytes'])} in {info['files']} files")
    print_result(head)
    if info["stages"]:
        table = Table(title="stages")
        for col in ("group", "status", "started", "took", "parameters"):
            table.add_column(col, overflow="fold")
        for key, rec in info["stages"].items():
            params = ", ".join(f"{k}={v if full else _short(v)}" for k, v in (rec.get("params") or {}).items())
            table.add_row(key, rec.get("status", "?"), _when(rec.get("started")), _took(rec), params)
        print_result(table)
    for title, rows in info.get("tables", {}).items():
        if not rows:
            continue
        table = Table(title=title)
        for col in rows[0]:
            table.add_column(str(col))
        for row in rows:
            table.add_row(*(str(v) for v in row.values()))
        print_result(table)


def _check(st) -> None:
    from rich.table import Table

    from ...errors import StoreError
    from ...store.summary import check_store
    from ..render import print_result

    out = check_store(st)
    problems = out["problems"]
    if not problems:
        print_result(f"[green]check:[/] no damage found ({out['arrays']} arrays, {out['checked']} with "
                     "chunk coverage checked)")
        return
    table = Table(title=f"damage in {st.path}", title_style="bold red")
    table.add_column("array")
    table.add_column("problem", overflow="fold")
    for key, problem in problems:
        table.add_row(key, problem)
    print_result(table)
    key, problem = problems[0]
    more = f" (and {len(problems) - 1} more problem(s) above)" if len(problems) > 1 else ""
    raise StoreError(f"the store {st.path} is damaged: {key}: {problem}{more}; restore it from a copy, or redo "
                     "the stage that wrote it with --overwrite")
