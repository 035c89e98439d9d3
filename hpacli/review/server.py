"""The review page's HTTP server: the standard library's ``ThreadingHTTPServer``.

Bound to 127.0.0.1 only. It serves nothing but these routes (no file is ever read from a
path in a request):

=======  ===============================  =============================================
GET      ``/``                            the page (package data ``page.html``)
GET      ``/api/cells``                   the selection: meta, cells, decisions
GET      ``/api/states``                  the decisions only (the page polls them)
GET      ``/api/cell/<i>/<kind>.png``     a panel (rgb, red, green, blue, yellow), the
                                          whole image (``image``) or a ``thumb``
GET      ``/api/export.csv``              the selection with its decisions, as CSV
POST     ``/api/decide``                  ``{"i": <position>, "state": <state>}``
=======  ===============================  =============================================

Every request must name this server in its ``Host`` header (127.0.0.1 or localhost with
its port: a page of another site that rebinds its DNS name to 127.0.0.1 is refused) and
carry the session token printed in the URL (``?t=`` or the ``X-Hpa-Token`` header), so
another local page cannot read or write decisions. A POST must also be same-origin
(``Origin``, ``Sec-Fetch-Site``), ``application/json`` and at most ``MAX_BODY`` bytes.
Other methods get 405. Cell positions are checked against the selection.
"""

from __future__ import annotations

import hmac
import json
import re
import secrets
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from urllib.parse import parse_qs, urlsplit

from ..errors import HpaError

HOST = "127.0.0.1"
MAX_BODY = 1024
TOKEN_HEADER = "X-Hpa-Token"
ROUTES = (  # (pattern, name, method)
    (re.compile(r"/"), "page", "GET"),
    (re.compile(r"/api/cells"), "cells", "GET"),
    (re.compile(r"/api/states"), "states", "GET"),
    (re.compile(r"/api/cell/(\d{1,9})/(rgb|red|green|blue|yellow|image|thumb)\.png"), "png", "GET"),
    (re.compile(r"/api/export\.csv"), "export", "GET"),
    (re.compile(r"/api/decide"), "decide", "POST"),
)
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}


def page_template() -> str:
    return resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")


class ReviewServer(ThreadingHTTPServer):
    """Serves one :class:`~hpacli.review.session.ReviewSession` on 127.0.0.1 (port 0 = a free one)."""

    daemon_threads = True
    allow_reuse_address = False

    def __init__(self, session, port: int = 0, token: str | None = None, log=None) -> None:
        try:
            super().__init__((HOST, int(port)), ReviewHandler)
        except OSError as exc:
            raise HpaError(f"cannot listen on {HOST}:{port}: {exc.strerror or exc}; pick another --port") from None
        self.session = session
        self.token = token or secrets.token_urlsafe(24)
        self.port = int(self.server_address[1])
        self.hosts = {f"{HOST}:{self.port}", f"localhost:{self.port}"}
        self.origins = {f"http://{h}" for h in self.hosts}
        self.page = page_template()
        self.log = log

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/?t={self.token}"


class RequestError(Exception):
    def __init__(self, status: HTTPStatus, message: str, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class ReviewHandler(BaseHTTPRequestHandler):
    server: ReviewServer
    server_version = "hpa-review"
    sys_version = ""
    timeout = 30  # a client that stops sending frees its thread

    # ------------------------------------------------------------------ methods
    def do_GET(self) -> None:  # noqa: N802
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def _refuse_method(self) -> None:
        self._error(RequestError(HTTPStatus.METHOD_NOT_ALLOWED, f"method {self.command} is not allowed",
                                 {"Allow": "GET, POST"}))

    do_HEAD = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _refuse_method  # noqa: N815

    def log_message(self, format, *args) -> None:  # noqa: A002 - the base class's name
        if self.server.log is not None:
            self.server.log(f"{self.address_string()} {format % args}")

    # ------------------------------------------------------------------ dispatch
    def _handle(self, method: str) -> None:
        try:
            name, match, query = self._route(method)
            getattr(self, f"_r_{name}")(match, query)
        except RequestError as exc:
            self._error(exc)
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as exc:  # never a dead page: say what went wrong
            if self.server.log is not None:
                self.server.log(f"error on {self.path.split('?')[0]}: {exc!r}")
            self._error(RequestError(HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error: {exc}"))

    def _route(self, method: str):
        host = self.headers.get("Host", "")
        if host not in self.server.hosts:
            raise RequestError(HTTPStatus.FORBIDDEN, "wrong Host: open the URL that `hpa review` printed")
        if not self.path.startswith("/"):
            raise RequestError(HTTPStatus.BAD_REQUEST, "bad request target")
        parts = urlsplit(self.path)
        try:
            query = parse_qs(parts.query, max_num_fields=8)
        except ValueError:
            raise RequestError(HTTPStatus.BAD_REQUEST, "too many query fields") from None
        token = self.headers.get(TOKEN_HEADER) or (query.get("t") or [""])[0]
        if not hmac.compare_digest(token.encode(), self.server.token.encode()):
            raise RequestError(HTTPStatus.FORBIDDEN, "missing or wrong token: open the URL that `hpa review` printed")
        for pattern, name, allowed in ROUTES:
            m = pattern.fullmatch(parts.path)
            if m:
                if method != allowed:
                    raise RequestError(HTTPStatus.METHOD_NOT_ALLOWED, f"{parts.path} takes {allowed} only",
                                       {"Allow": allowed})
                return name, m, query
        raise RequestError(HTTPStatus.NOT_FOUND, "no such page")

    # ------------------------------------------------------------------ routes
    def _r_page(self, match, query) -> None:
        nonce = secrets.token_urlsafe(16)
        body = self.server.page.replace("{{NONCE}}", nonce).encode()
        csp = (f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; img-src 'self'; "
               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
        self._send(HTTPStatus.OK, body, "text/html; charset=utf-8", {"Content-Security-Policy": csp})

    def _r_cells(self, match, query) -> None:
        s = self.server.session
        self._json({"meta": s.meta(), "cells": s.cells_json(), **s.states()})

    def _r_states(self, match, query) -> None:
        self._json(self.server.session.states())

    def _r_png(self, match, query) -> None:
        try:
            data = self.server.session.png(int(match.group(1)), match.group(2))
        except KeyError as exc:
            raise RequestError(HTTPStatus.NOT_FOUND, str(exc.args[0])) from None
        self._send(HTTPStatus.OK, data, "image/png", {"Cache-Control": "private, max-age=3600"})

    def _r_export(self, match, query) -> None:
        s = self.server.session
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{s.name}_{s.run}_review.csv")
        self._send(HTTPStatus.OK, s.export_csv(), "text/csv; charset=utf-8",
                   {"Content-Disposition": f'attachment; filename="{name}"'})

    def _r_decide(self, match, query) -> None:
        body = self._json_body()
        if not isinstance(body, dict) or set(body) != {"i", "state"}:
            raise RequestError(HTTPStatus.BAD_REQUEST, 'the body must be {"i": <cell>, "state": <state>}')
        i, state = body["i"], body["state"]
        s = self.server.session
        if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < s.n:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"no cell {i!r} in this selection (0..{s.n - 1})")
        if state not in s.meta()["states"]:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"state must be one of {', '.join(s.meta()['states'])}")
        try:
            self._json(s.decide(i, state))
        except HpaError as exc:
            raise RequestError(HTTPStatus.INTERNAL_SERVER_ERROR, f"not saved: {exc}") from None

    # ------------------------------------------------------------------ checks and replies
    def _json_body(self):
        origin = self.headers.get("Origin")
        if origin is not None and origin not in self.server.origins:
            raise RequestError(HTTPStatus.FORBIDDEN, "cross-origin request refused")
        if self.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
            raise RequestError(HTTPStatus.FORBIDDEN, "cross-site request refused")
        ctype = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise RequestError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send application/json")
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "Content-Length required")
        if int(length) > MAX_BODY:
            raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"bodies are at most {MAX_BODY} bytes")
        raw = self.rfile.read(int(length))
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise RequestError(HTTPStatus.BAD_REQUEST, "the body is not JSON") from None

    def _json(self, obj) -> None:
        self._send(HTTPStatus.OK, json.dumps(obj, separators=(",", ":")).encode(), "application/json")

    def _error(self, exc: RequestError) -> None:
        self.close_connection = True
        body = json.dumps({"error": exc.message}).encode()
        self._send(exc.status, body, "application/json", exc.headers)

    def _send(self, status: HTTPStatus, body: bytes, ctype: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        headers = {"Cache-Control": "no-store", **SECURITY_HEADERS, **(headers or {})}
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
