"""What every ``run_<stage>`` returns: a dataclass, printable as JSON (``--json``).

:class:`Summary` gives the dataclasses of the stages one shape: ``as_dict()`` (plain data,
what the stage records in the store and what ``--json`` prints) and, for scripts written
against the dicts some stages returned before, read access by key (``summary["cells"]``).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from .plaindata import to_plain


class Summary:
    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(to_plain(self.as_dict()), indent=indent, default=str)

    # read access by key, as for the dicts some stages returned before
    def __getitem__(self, key: str) -> Any:
        if key in {f.name for f in dataclasses.fields(self)}:  # type: ignore[arg-type]
            return getattr(self, key)
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def __contains__(self, key: str) -> bool:
        return key in {f.name for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    def keys(self):
        return [f.name for f in dataclasses.fields(self)]  # type: ignore[arg-type]
