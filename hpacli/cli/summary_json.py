"""``--json``: a stage's closing summary (a dataclass) as JSON on stdout."""

from __future__ import annotations

import json

import typer


def print_json(summary) -> None:
    from ..plaindata import to_plain

    data = summary.as_dict() if hasattr(summary, "as_dict") else summary
    typer.echo(json.dumps(to_plain(data), indent=2, default=str))
