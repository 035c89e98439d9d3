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


def report_unfinished_shard(summary, did: str, last_step: str, json_out: bool, **json_extra: Any) -> None:
    """What a shard process that left blocks to the others prints (dedup, negatives): its
    summary as JSON (with ``json_extra``), or its problems, what it ``did`` and who writes
    the closing ``last_step``."""
    if json_out:
        print_json({**summary.as_dict(), **json_extra})
        return
    from ..progress import console

    if summary.problems:
        console.print(problems_table(summary.problems))
    console.print(f"[green]{did}[/] ({summary.shard}); {summary.blocks_done}/{summary.blocks} blocks done: "
                  f"[yellow]other shards still to run[/] (the last to finish {last_step})", highlight=False)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def demo_tables(result) -> list[Table]:
    """The closing tables of `hpa demo`: every row's scores on dev and test, the selections'
    recovery, Y_init's spindle signal, step times."""
    from ..classes import MITOTIC_SPINDLE
    from ..demo import ROWS

    scores = result.scores
    best = scores.get("best")

    def fmt(v):
        return "n/a" if v is None or v != v else f"{v:.4f}"

    def fmt1(v):
        return "" if v is None or v != v else f"{v:.1f}"

    spindle = str(MITOTIC_SPINDLE)
    splits = [sp for sp in ("dev", "test") if any(sp in sc for sc in scores["rows"].values())]
    table = Table(title=f"hpa demo: cell-level scores on the synthetic {' and '.join(splits)} images (IoU ≥ 0.6)")
    table.add_column("row")
    for sp in splits:
        table.add_column(f"{sp} mAP", justify="right")
    table.add_column("test spindle AP", justify="right")
    for row, sc in scores["rows"].items():
        test = sc.get("test") or {}
        table.add_row(ROWS.get(row, row), *(fmt((sc.get(sp) or {}).get("mAP")) for sp in splits),
                      fmt((test.get("per_class_AP") or {}).get(spindle)))
    bounds = scores.get("bounds") or {}
    if bounds:
        from ..demo import BOUNDS

        table.add_section()
        for b, name in BOUNDS.items():
            table.add_row(f"[dim]{name}[/]", *(fmt((bounds.get(sp) or {}).get(b)) for sp in splits), "")
    if best in scores["rows"]:
        table.caption = (f"submission.csv: row {ROWS.get(best, best).split(')')[0]}); "
                         "submission_image_model.csv: row (a)")
    out = [table]
    sels = scores.get("selections") or {}
    if sels:
        rec = Table(title="selections (analysis): mitotic-spindle training cells missing from the labels")
        for col in ("rule", "spindle cells", "missing (Y_init < 0.4)", "selected", "recovered", "precision"):
            rec.add_column(col, justify="left" if col == "rule" else "right")
        for name, r in sels.items():
            rec.add_row(name, str(r.get("spindle_cells")), str(r.get("missing_from_labels")), str(r.get("selected")),
                        str(r.get("recovered")), fmt(r.get("precision")))
        out.append(rec)
    sig = (scores.get("y_init_spindle") or {}).get("labelled_images")
    if sig:
        t = Table(title="Y_init (image models' pseudo-labels) on the spindle cells of labelled images (analysis)")
        for col in ("cells", "spindle cells", "AP", "chance"):
            t.add_column(col, justify="right")
        t.add_row(str(sig.get("cells")), str(sig.get("spindle_cells")), fmt(sig.get("ap")), fmt(sig.get("chance")))
        out.append(t)
    times = Table(title="time per step (CPU: this process and its workers)")
    times.add_column("step")
    times.add_column("wall s", justify="right")
    times.add_column("CPU s", justify="right")
    cpu = getattr(result, "cpu_timings", {}) or {}
    for step, sec in result.timings.items():
        times.add_row(step, f"{sec:.1f}", fmt1(cpu.get(step)))
    times.add_row("total", f"{sum(result.timings.values()):.1f}", fmt1(sum(cpu.values()) if cpu else None))
    out.append(times)
    return out
