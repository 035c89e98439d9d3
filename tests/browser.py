"""A headless Chromium driven through the DevTools protocol over a pipe (no WebDriver).

Chromium started with ``--remote-debugging-pipe`` reads protocol messages (JSON, each
ended by a NUL byte) on its file descriptor 3 and answers on 4. That needs nothing but
the standard library and the OS's Chromium: no driver binary whose version must match the
browser, no Python package, nothing downloaded. Used by tests/test_review.py and
examples/review_screenshot.py.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-default-browser-check", "--disable-extensions", "--mute-audio", "--remote-debugging-pipe")
KEY_CODES = {"Backspace": 8, "ArrowLeft": 37, "ArrowUp": 38, "ArrowRight": 39, "ArrowDown": 40}


def find_chromium() -> str | None:
    """The Chromium to use: $HPA_CHROMIUM, else the first of CANDIDATES on PATH."""
    env = os.environ.get("HPA_CHROMIUM")
    if env:
        return env if Path(env).exists() else None
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


class ProtocolError(RuntimeError):
    pass


class Chromium:
    """One headless browser with a fresh profile; ``with Chromium() as b: page = b.new_page()``."""

    def __init__(self, executable: str | None = None, width: int = 1400, height: int = 900) -> None:
        exe = executable or find_chromium()
        if exe is None:
            raise FileNotFoundError("no Chromium found (apt-get install chromium, or set HPA_CHROMIUM)")
        self.width, self.height = width, height
        self.profile = tempfile.mkdtemp(prefix="hpa-chromium-")
        to_browser_r, self._w = os.pipe()
        self._r, from_browser_w = os.pipe()
        args = [exe, *FLAGS, f"--user-data-dir={self.profile}", f"--window-size={width},{height}", "about:blank"]
        # bash puts our pipe ends on the descriptors 3 and 4 that Chromium expects (dash, the
        # usual /bin/sh, takes single-digit descriptors only; preexec_fn is unsafe with threads)
        script = f'exec "$0" "$@" 3<&{to_browser_r} 4>&{from_browser_w} {to_browser_r}<&- {from_browser_w}>&-'
        self.log = open(Path(self.profile) / "chromium.log", "wb")  # noqa: SIM115 - closed in close()
        bash = shutil.which("bash") or "/bin/bash"
        self.proc = subprocess.Popen([bash, "-c", script, *args], pass_fds=(to_browser_r, from_browser_w),
                                     stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._ids = itertools.count(1)
        self._results: dict[int, dict] = {}
        self._cond = threading.Condition()
        self._closed = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            self.send("Browser.getVersion", timeout=30)
        except Exception:
            self.close()
            raise

    # ------------------------------------------------------------------ protocol
    def _read(self) -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(self._r, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                break
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                msg = json.loads(raw)
                if "id" in msg:
                    with self._cond:
                        self._results[msg["id"]] = msg
                        self._cond.notify_all()
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 20.0):
        mid = next(self._ids)
        msg = {"id": mid, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        data = json.dumps(msg).encode() + b"\0"
        while data:
            data = data[os.write(self._w, data):]
        deadline = time.monotonic() + timeout
        with self._cond:
            while mid not in self._results:
                left = deadline - time.monotonic()
                if self._closed or left <= 0:
                    raise ProtocolError(f"{method}: no answer from Chromium (see {self.profile}/chromium.log)")
                self._cond.wait(left)
            res = self._results.pop(mid)
        if "error" in res:
            raise ProtocolError(f"{method}: {res['error'].get('message')}")
        return res.get("result", {})

    # ------------------------------------------------------------------ pages
    def new_page(self) -> Page:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session)
        page.send("Page.enable")
        page.send("Runtime.enable")
        page.send("Emulation.setDeviceMetricsOverride", {"width": self.width, "height": self.height,
                                                          "deviceScaleFactor": 1, "mobile": False})
        return page

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send("Browser.close", timeout=5)
            except (ProtocolError, OSError):
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for fd in (self._w, self._r):
            try:
                os.close(fd)
            except OSError:
                pass
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Page:
    def __init__(self, browser: Chromium, session: str) -> None:
        self.browser, self.session = browser, session

    def send(self, method: str, params: dict | None = None, timeout: float = 20.0):
        return self.browser.send(method, params, session=self.session, timeout=timeout)

    def evaluate(self, expression: str):
        res = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in res:
            d = res["exceptionDetails"]
            raise ProtocolError(f"{expression!r}: {d.get('exception', {}).get('description') or d.get('text')}")
        return res["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 20.0, poll: float = 0.05):
        """Evaluate ``expression`` until it is truthy (a guard, not a timing: the limit only
        stops a test that would otherwise hang)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = self.evaluate(expression)
            except ProtocolError as exc:  # e.g. the document went away in a navigation: ask again
                value, last = None, exc
            else:
                last = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"still false after {timeout} s: {expression}" + (f" ({last})" if last else ""))
            time.sleep(poll)

    def goto(self, url: str, ready: str = "document.body && document.body.dataset.ready === '1'") -> None:
        self.wait_for("window.__hpaOld = true")
        self.send("Page.navigate", {"url": url})
        self.wait_for(f"!window.__hpaOld && ({ready})")

    def reload(self, ready: str = "document.body && document.body.dataset.ready === '1'") -> None:
        self.wait_for("window.__hpaOld = true")
        self.send("Page.reload", {"ignoreCache": True})
        self.wait_for(f"!window.__hpaOld && ({ready})")

    def press(self, key: str) -> None:
        """A real key press (keyDown with its text, then keyUp), as typed on a keyboard."""
        if len(key) == 1:
            code = f"Key{key.upper()}" if key.isalpha() else (f"Digit{key}" if key.isdigit() else "")
            params = {"key": key, "code": code, "text": key, "unmodifiedText": key,
                      "windowsVirtualKeyCode": ord(key.upper())}
        else:
            params = {"key": key, "code": key, "windowsVirtualKeyCode": KEY_CODES[key]}
        self.send("Input.dispatchKeyEvent", {"type": "keyDown", **params})
        self.send("Input.dispatchKeyEvent", {"type": "keyUp", **{k: v for k, v in params.items() if k != "text"}})

    def images_loaded(self, selector: str = "img:not([loading=lazy])") -> bool:
        return bool(self.evaluate(
            f"[...document.querySelectorAll({json.dumps(selector)})].every(i => !i.src || "
            "(i.complete && i.naturalWidth > 0))"))

    def screenshot(self, path: str | os.PathLike) -> Path:
        data = self.send("Page.captureScreenshot", {"format": "png"})["data"]
        path = Path(path)
        path.write_bytes(base64.b64decode(data))
        return path
