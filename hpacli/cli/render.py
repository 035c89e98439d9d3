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
