"""``hpa review``: the by-eye review of a selection's cells, as a local web page.

:class:`~hpacli.review.session.ReviewSession` is what the page shows and writes (one
selection of one de-noising run); :class:`~hpacli.review.server.ReviewServer` serves it on
127.0.0.1 with the standard library's ``ThreadingHTTPServer`` (no web framework: a handful
of routes, a page of inline HTML/JS/CSS shipped as package data, PNGs rendered by hpacli).
Decisions live in the store (:mod:`hpacli.store.denoise`), one write per decision.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager


def open_session(store, run: str, name: str, cls: int | None = None, reviewer: str | None = None):
    from .session import ReviewSession

    if reviewer is None:
        import getpass

        try:
            reviewer = getpass.getuser()
        except (KeyError, OSError):
            reviewer = ""
    return ReviewSession(store, run, name, cls=cls, reviewer=reviewer)


@contextmanager
def serving(session, port: int = 0, token: str | None = None, log=None):
    """Serve ``session`` in a background thread for the ``with`` block; yields the server
    (``.url``). Tests and scripts use this; ``hpa review`` serves in the foreground."""
    from .server import ReviewServer

    server = ReviewServer(session, port=port, token=token, log=log)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
