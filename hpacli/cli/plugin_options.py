"""``--option key=value`` (repeatable) → the keyword arguments of a plugin's factory."""

from __future__ import annotations

import json
from typing import Any

from ..errors import InputError


def parse_options(items: list[str] | None, aliases: dict[str, Any] | None = None) -> dict[str, Any]:
    """``["k=40", "knn=exact", "tol=0"]`` → ``{"k": 40, "knn": "exact", "tol": 0}``: a value
    is JSON when it parses, else the text. ``aliases`` (options given by their own flags,
    None = not given) are merged in; one key given twice with different values is an error."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            raise InputError(f"--option {item!r}: write KEY=VALUE (e.g. -o k=40)")
        if not key.isidentifier():
            raise InputError(f"--option {item!r}: {key!r} is not an option name")
        try:
            value: Any = json.loads(text)
        except ValueError:
            value = text
        if key in out and out[key] != value:
            raise InputError(f"--option {key} is given twice ({out[key]!r} and {value!r})")
        out[key] = value
    for key, value in (aliases or {}).items():
        if value is None:
            continue
        if key in out and out[key] != value:
            raise InputError(f"option {key} is given twice ({out[key]!r} and {value!r})")
        out[key] = value
    return out
