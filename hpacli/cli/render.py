"""Rich tables shared by commands, and printing results to stdout.

Results (tables, JSON) go to stdout so that ``hpa info > f`` and ``hpa plugins --json |
jq`` work; progress, warnings and errors go to stderr (``hpacli.progress.console``).
"""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.table import Table

out = Console()  # stdout (resolved at print time, so captured output works too)


def print_result(*renderables: Any) -> None:
    """Print tables (or any rich renderable) to stdout."""
    for r in renderables:
        out.print(r)


def jsonable(obj: Any) -> Any:
    """``obj`` with numpy values, paths, dates, dataclasses, sets and tuples made JSON types."""
    import dataclasses
    import datetime
    import os

    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (datetime.datetime, datetime.date)):
        return obj.isoformat()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return jsonable(dataclasses.asdict(obj))
    tolist = getattr(obj, "tolist", None)  # numpy scalars and arrays
    if callable(tolist):
        return jsonable(tolist())
    return str(obj)


def print_json(data: Any) -> None:
    """Print ``data`` as indented JSON to stdout (plain text: no colours, no wrapping)."""
    import typer

    typer.echo(json.dumps(jsonable(data), indent=2, ensure_ascii=False))


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


def demo_tables(result) -> list[Table]:
    """The closing tables of `hpa demo`: scores of (a) and (b), recovery, step times."""
    from ..classes import MITOTIC_SPINDLE

    scores = result.scores
    a, b = scores["image-model"], scores["pipeline"]

    def fmt(v):
        return "n/a" if v is None else f"{v:.4f}"

    spindle = str(MITOTIC_SPINDLE)
    table = Table(title="hpa demo: cell-level scores on the synthetic test images (IoU ≥ 0.6)")
    table.add_column("")
    table.add_column("(a) image-level model on cells", justify="right")
    table.add_column("(b) full pipeline", justify="right")
    table.add_row("mAP (19 classes)", fmt(a["mAP"]), fmt(b["mAP"]))
    table.add_row("mitotic spindle AP", fmt(a["per_class_AP"].get(spindle)), fmt(b["per_class_AP"].get(spindle)))
    rec = scores.get("recovery") or {}
    denoise = Table(title="de-noising: mitotic-spindle cells missing from the image labels")
    for col in ("spindle cells (train)", "missing (Y_init < 0.4)", "selected", "recovered", "recall", "precision"):
        denoise.add_column(col, justify="right")
    denoise.add_row(str(rec.get("spindle_cells")), str(rec.get("missing_from_labels")), str(rec.get("selected")),
                    str(rec.get("recovered")), fmt(rec.get("recall")), fmt(rec.get("precision")))
    times = Table(title="wall time per step")
    times.add_column("step")
    times.add_column("seconds", justify="right")
    for step, sec in result.timings.items():
        times.add_row(step, f"{sec:.1f}")
    times.add_row("total", f"{sum(result.timings.values()):.1f}")
    return [table, denoise, times]
