"""hpa review: review a selection's cells by eye in a local web page; each decision goes to the store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..options import StoreOpt


def command(
    store: StoreOpt = Path("hpa.zarr"),
    run: Annotated[str, typer.Option("--run", "-r", help="The de-noising run holding the selection.")] = "default",
    selection: Annotated[str, typer.Option("--selection", "--name", help="The selection to review "
                                           "(`hpa select-mitotic --name`).")] = "mitotic",
    cls: Annotated[int | None, typer.Option("--class", min=0, max=18, help="The class the cells are reviewed for "
                                            "(default: the selection's).")] = None,
    port: Annotated[int, typer.Option("--port", "-p", min=0, max=65535, help="Port on 127.0.0.1 (0 = a free one).")]
    = 0,
    open_browser: Annotated[bool, typer.Option("--open", help="Open the page in the default browser.")] = False,
    reviewer: Annotated[str | None, typer.Option("--reviewer", help="Name stored with each decision "
                                                 "(default: your login name).")] = None,
    export: Annotated[Path | None, typer.Option("--export", help="Write the selection with its decisions to this "
                                                "CSV and exit (no page).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every request.")] = False,
) -> None:
    """Serve a page to accept / reject / skip each selected cell with single keys.

    The page shows each cell's masked crop (composite and the four channels, the protein
    stretched), its whole image with the cell outlined, Y_init, Y_opt, the rule that proposed
    it and its nearest accepted neighbours. Every decision is written to the store at once;
    `hpa train-cell --selection` and `hpa select-mitotic --accept review` read them.
    The page listens on 127.0.0.1 only and needs the token in the printed URL.
    """
    from ...errors import InputError
    from ...progress import console
    from ...review import open_session
    from ...store import denoise as D
    from ...store import open_store

    if export is not None and export.suffix.lower() != ".csv":
        raise InputError(f"--export {export}: the decisions are written as CSV; give a .csv path")

    st = open_store(store, "a")
    session = open_session(st, run, selection, cls=cls, reviewer=reviewer)
    if export is not None:
        export.parent.mkdir(parents=True, exist_ok=True)
        export.write_bytes(session.export_csv())
        c = session.states()["counts"]
        console.print(f"wrote {export}: {c['total']} cell(s), {c['reviewed']} reviewed, {c['accepted']} accepted")
        return

    from ...review.server import ReviewServer

    log = (lambda msg: console.print(msg, highlight=False, markup=False)) if verbose else None
    server = ReviewServer(session, port=port, log=log)
    c = session.states()["counts"]
    console.print(f"reviewing selection {selection!r} of {run!r}: {c['total']} cell(s), {c['reviewed']} reviewed "
                  f"so far; class {session.cls} ({session.meta()['class_name']})", highlight=False)
    import signal

    def stop(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)  # `kill` ends it as Ctrl-C does
    try:
        # the URL alone on stdout (scripts read it); the rest goes to stderr
        typer.echo(server.url)
        console.print("keys: a accept, r reject, s skip, u undo, j/k next/previous; Ctrl-C stops", highlight=False)
        if open_browser:
            import webbrowser

            webbrowser.open(server.url)
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        signal.signal(signal.SIGTERM, previous)
    c = D.review_counts(session.states()["state"])
    console.print(f"stopped: {c['reviewed']} of {c['total']} reviewed ({c['accepted']} accepted, {c['rejected']} "
                  f"rejected, {c['skipped']} skipped); the decisions are in the store", highlight=False)
