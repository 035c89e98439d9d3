"""hpa info: what a store holds."""

from __future__ import annotations

from pathlib import Path

from ..options import StoreOpt


def command(store: StoreOpt = Path("hpa.zarr")) -> None:
    """Show a store's images, cells, stages (time, parameters, status) and size on disk."""
    from rich.table import Table

    from ...progress import console
    from ...store import open_store
    from ...store.summary import summarize
    from ..render import human_bytes

    st = open_store(store, "r")
    info = summarize(st)
    head = Table.grid(padding=(0, 2))
    head.add_row("store", str(st.path))
    head.add_row("schema", str(st.schema_version))
    for k, v in info["counts"].items():
        head.add_row(k, str(v))
    head.add_row("on disk", f"{human_bytes(info['bytes'])} in {info['files']} files")
    console.print(head)
    if info["stages"]:
        table = Table(title="stages")
        for col in ("group", "status", "started", "finished", "parameters"):
            table.add_column(col, overflow="fold")
        for key, rec in info["stages"].items():
            params = ", ".join(f"{k}={v}" for k, v in (rec.get("params") or {}).items())
            table.add_row(key, rec.get("status", "?"), rec.get("started") or "", rec.get("finished") or "", params)
        console.print(table)
    for title, rows in info.get("tables", {}).items():
        if not rows:
            continue
        table = Table(title=title)
        for col in rows[0]:
            table.add_column(str(col))
        for row in rows:
            table.add_row(*(str(v) for v in row.values()))
        console.print(table)
