"""Checks of a CLI result shared by tests: it worked, or it refused in one line."""

from __future__ import annotations

from hpacli.errors import EXIT_USAGE


def ok(res):
    assert res.exit_code == 0, res.output
    return res


def refused(res, *words) -> str:
    """The command refused (exit 2) in one line, without a traceback, naming ``words``."""
    text = res.output.strip()
    assert res.exit_code == EXIT_USAGE, text
    assert "Traceback" not in text and len(text.splitlines()) == 1, text
    for w in words:
        assert w in text, (w, text)
    return text
