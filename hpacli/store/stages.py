"""Stage provenance: who wrote a stage's group, with which parameters, when, and how it ended.

Stored in the attribute ``provenance`` of the stage's group (``segment``,
``pseudolabel/<run>``, ...) as plain JSON::

    {"stage", "command", "params", "hpacli_version", "started", "finished", "status", "summary"}

``status`` is ``running`` | ``done`` | ``failed``. Shard processes share one record.
"""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from typing import Any

from ..errors import HpaError
from ..plaindata import to_plain


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")




class StageRun:
    def __init__(self, store, key: str, stage: str, params: dict, check_params: tuple[str, ...] = ()) -> None:
        self.store = store
        self.key = key
        self.stage = stage
        self.params = to_plain(params)
        store.group(key, create=True)
        old = store.attrs(key).get("provenance")
        if old and check_params:
            changed = [p for p in check_params if old.get("params", {}).get(p) != self.params.get(p)]
            if changed and old.get("status") != "done":
                was = ", ".join(f"{p}={old['params'].get(p)!r}" for p in changed)
                raise HpaError(
                    f"{key} was started with other {', '.join(changed)} ({was}); "
                    "resume with the same values or pass --overwrite"
                )
        from .. import __version__

        record = {
            "stage": stage,
            "command": " ".join(["hpa", *sys.argv[1:]]) if sys.argv and sys.argv[0].endswith("hpa") else None,
            "params": self.params,
            "hpacli_version": __version__,
            "started": (old or {}).get("started") if (old and old.get("status") == "running") else _now(),
            "finished": None,
            "status": "running",
        }
        store.update_attrs(key, {"provenance": record, "encoding": f"hpacli-stage-{stage}", "encoding_version": 1})

    def finish(self, status: str = "done", **summary: Any) -> None:
        record = dict(self.store.attrs(self.key).get("provenance") or {})
        record.update({"finished": _now(), "status": status})
        if summary:
            record["summary"] = to_plain(summary)
        self.store.update_attrs(self.key, {"provenance": record})


def begin_stage(store, key: str, stage: str, params: dict, check_params: tuple[str, ...] = ()) -> StageRun:
    store.require_writable()
    return StageRun(store, key, stage, params, check_params)


def stage_records(store) -> dict[str, dict]:
    """Every provenance record in the store, by group key (walks groups only, not chunks)."""
    import json

    out: dict[str, dict] = {}
    stack = [store.path]
    while stack:
        folder = stack.pop()
        for child in sorted(folder.iterdir()):
            meta = child / "zarr.json"
            if not child.is_dir() or not meta.exists():
                continue
            doc = json.loads(meta.read_text())
            if doc.get("node_type") != "group":
                continue
            rec = (doc.get("attributes") or {}).get("provenance")
            if isinstance(rec, dict):
                out[child.relative_to(store.path).as_posix()] = rec
            stack.append(child)
    return dict(sorted(out.items()))
