"""Rich tables shared by commands."""

from __future__ import annotations

from rich.table import Table


def problems_table(problems: list[dict], limit: int = 50) -> Table:
    table = Table(title=f"{len(problems)} image(s) skipped", title_style="bold yellow")
    table.add_column("ID")
    table.add_column("problem")
    for p in problems[:limit]:
        table.add_row(str(p.get("ID")), str(p.get("problem")))
    if len(problems) > limit:
        table.add_row("...", f"{len(problems) - limit} more (stored in the ingest record; see `hpa info`)")
    return table


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
