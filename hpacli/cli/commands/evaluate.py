"""hpa evaluate: the competition metric of a submission against a truth file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..options import QuietOpt


def command(
    truth: Annotated[Path, typer.Option("--truth", "-t", help="Truth CSV (submission format, confidence 1).")],
    submission: Annotated[Path, typer.Option("--submission", help="Submission CSV to score.")],
    iou: Annotated[str, typer.Option("--iou", help="mask (pixel IoU) or box (IoU of the masks' bounding boxes).")] = "mask",
    iou_threshold: Annotated[
        float, typer.Option("--iou-threshold", min=0.0, max=1.0, help="A match needs IoU >= this.")
    ] = 0.6,
    ties: Annotated[
        str,
        typer.Option(
            "--ties",
            help="Equal scores: submission (ranked one by one in file order: images as listed, triples as "
            "written; a score the Open Images evaluator gives for that order) or group (one point per tie group, "
            "order-independent; the evaluator's score when tied false positives come first).",
        ),
    ] = "submission",
    bounds: Annotated[
        bool,
        typer.Option("--bounds", help="Also score the submission's cells with random scores (floor, mean of 3 "
                     "seeded draws) and with their true classes (ceiling: a perfect classifier of these cells)."),
    ] = False,
    json_out: Annotated[
        str | None,
        typer.Option("--json", help="Also write {mAP, per_class_AP} as JSON to this path ('-' for stdout)."),
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """Score a submission: mAP over the 19 classes at IoU >= 0.6 (Open Images challenge rules)."""
    import json
    import math

    from rich.console import Console
    from rich.table import Table

    from ...errors import InputError
    from ...evaluate.metric import IOU_MODES, TIE_MODES, bounds_files, evaluate_files
    from ...progress import console, make_progress

    if iou not in IOU_MODES:
        raise InputError(f"--iou must be one of {', '.join(IOU_MODES)}, not {iou!r}")
    if ties not in TIE_MODES:
        raise InputError(f"--ties must be one of {', '.join(TIE_MODES)}, not {ties!r}")
    with make_progress(transient=True, disable=quiet) as progress:
        result = evaluate_files(truth, submission, iou=iou, threshold=iou_threshold, ties=ties, progress=progress)

    out = Console() if json_out != "-" else console  # keep stdout clean for JSON
    table = Table(title=f"{submission.name} vs {truth.name}: AP at {iou} IoU >= {iou_threshold:g}")
    for col, kw in (("class", {"justify": "right"}), ("name", {}), ("AP", {"justify": "right"}),
                    ("truth", {"justify": "right"}), ("detections", {"justify": "right"}),
                    ("TP", {"justify": "right"})):
        table.add_column(col, **kw)
    for c, ap in result.per_class_ap.items():
        ap_text = "[dim]n/a[/]" if math.isnan(ap) else f"{ap:.4f}"
        table.add_row(str(c), result.class_names[c], ap_text, str(result.n_truth[c]), str(result.n_det[c]),
                      str(result.n_tp[c]))
    n_classes = sum(1 for v in result.per_class_ap.values() if not math.isnan(v))
    table.add_section()
    map_text = "n/a" if math.isnan(result.mAP) else f"{result.mAP:.4f}"
    table.add_row("", f"[bold]mAP[/] ({n_classes} classes with truth)", f"[bold]{map_text}[/]",
                  str(sum(result.n_truth.values())), str(sum(result.n_det.values())), str(sum(result.n_tp.values())))
    out.print(table)
    notes = []
    if result.n_images_without_truth:
        notes.append(f"{result.n_images_without_truth} submitted image(s) have no truth row (their detections are dropped)")
    if result.n_images_without_pred:
        notes.append(f"{result.n_images_without_pred} truth image(s) are missing from the submission")
    if result.n_dropped:
        notes.append(f"{result.n_dropped} detection(s) of classes absent from their image's truth dropped")
    if result.n_empty:
        notes.append(f"{result.n_empty} detection(s) with empty masks ignored")
    for note in notes:
        out.print(f"[yellow]note:[/] {note}", highlight=False)
    out.print(f"mAP {map_text}", highlight=False)
    room = None
    if bounds:
        room = bounds_files(truth, submission, iou=iou, threshold=iou_threshold)
        out.print(f"the same cells rescored: random scores (floor) {room['floor']:.4f}, their true classes "
                  f"(ceiling) {room['ceiling']:.4f}", highlight=False)

    if json_out is not None:
        data = result.to_json_dict()
        if room is not None:
            data["bounds"] = room
        text = json.dumps(data, indent=2)
        if json_out == "-":
            typer.echo(text)
        else:
            path = Path(json_out)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text + "\n")
