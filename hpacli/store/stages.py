"""Stage provenance: who wrote a stage's group, with which parameters, when, and how it ended.

Stored in the attribute ``provenance`` of the stage's group (``segment``,
``pseudolabel/<run>``, ...) as plain JSON::

    {"stage", "command", "params", "hpacli_version", "started", "finished", "status", "summary"}

``status`` is ``running`` | ``done`` | ``failed`` (the summary then holds ``error``: the
exception's one line, or ``interrupted``). A process killed with SIGKILL leaves
``running``; re-running the stage resumes it. Shard processes share one record.
Resumable, shardable stages also keep the options that decide their output in the
group's ``settings`` (:func:`claim_settings`).
"""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from typing import Any

from ..errors import EXIT_RUNTIME, HpaError, InputError
from ..plaindata import to_plain


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class StageRun:
    finished: str | None = None  # the status this process closed the record with
    # what the stage has done so far (a dict, or a function giving one): recorded with
    # ``failed`` when the block raises
    summary = None

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
        stamp = {"provenance": record}
        if not store.attrs(key).get("encoding"):  # never over a layout module's own stamp
            stamp.update({"encoding": f"hpacli-stage-{stage}", "encoding_version": 1})
        store.update_attrs(key, stamp)

    def finish(self, status: str = "done", **summary: Any) -> None:
        record = dict(self.store.attrs(self.key).get("provenance") or {})
        record.update({"finished": _now(), "status": status})
        if summary:
            record["summary"] = to_plain(summary)
        self.store.update_attrs(self.key, {"provenance": record})
        self.finished = status

    def keep_running(self) -> None:
        """Leave the record ``running`` (other shards still work on the stage)."""
        self.finished = "running"

    # ``with begin_stage(...) as run:`` records ``failed`` (with the error) when the block
    # raises, and ``done`` when it ends without calling finish() itself.
    def __enter__(self) -> StageRun:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            if self.finished is None:
                self.finish("done")
            return False
        if self.finished is None or self.finished == "running":
            try:
                self.fail(exc)
            except Exception:  # the store may be what failed; the original error matters more
                pass
        return False

    def fail(self, exc: BaseException | None = None, **summary: Any) -> None:
        """Record ``failed`` with a one-line reason (interrupted, or the error's message). An
        :class:`HpaError` that ended the stage's work exits ``EXIT_RUNTIME`` (3), not 2; an
        :class:`InputError` stays a refusal of bad input (2: ``--strict`` meeting a bad image)."""
        if isinstance(exc, HpaError) and not isinstance(exc, InputError):
            exc.exit_code = EXIT_RUNTIME
        if exc is None or isinstance(exc, KeyboardInterrupt):
            reason = "interrupted" if exc is not None else None
        else:
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
        done = self.summary() if callable(self.summary) else self.summary
        summary = {**(done or {}), **summary}
        if reason:
            summary["error"] = reason
        self.finish("failed", **summary)


def begin_stage(store, key: str, stage: str, params: dict, check_params: tuple[str, ...] = ()) -> StageRun:
    """Open the stage's provenance record (status ``running``). Close it with ``finish()``,
    or use it as a context manager so that an exception records ``failed``::

        with begin_stage(store, key, "denoise", params) as run:
            ...                      # raises -> status failed, with the error's message
            run.finish("done", n=3)  # or leave the block: status done
    """
    store.require_writable()
    return StageRun(store, key, stage, params, check_params)


def stage_record(store, key: str) -> dict:
    """The provenance record of the stage group ``key`` ({} when none)."""
    return dict(store.attrs(key).get("provenance") or {}) if store.has(key) else {}


def claim_settings(store, key: str, settings: dict, what: str, hint: str = "pass --overwrite to start over") -> dict:
    """The options that decide what a resumable, shardable stage writes under ``key``.

    The first process stores them (attribute ``settings`` of the group); every later
    process (a resumed run, another shard) must pass the same, or gets one line naming
    each option that differs. Checked and written under one lock, so two shards started at
    the same moment with different options cannot both pass. Returns the plain settings."""
    plain = to_plain(settings)
    store.require_writable()
    store.group(key, create=True)
    with store.lock(SETTINGS_LOCK):
        old = store.attrs(key).get("settings")
        if old is None:
            store.update_attrs(key, {"settings": plain})
            return plain
        diff = [k for k in sorted(set(old) | set(plain)) if old.get(k) != plain.get(k)]
        if diff:
            was = "; ".join(f"{k} {_show(old.get(k))} (now {_show(plain.get(k))})" for k in diff)
            raise HpaError(f"{what} was started with other options: {was}; use the same options, or {hint}")
    return plain


SETTINGS_LOCK = ".hpa-settings.lock"


def _show(value: Any) -> str:
    if isinstance(value, dict) and "path" in value:
        value = value["path"]
    text = "default" if value is None else str(value)
    return text if len(text) <= 60 else text[:59] + "…"


def stage_records(store) -> dict[str, dict]:
    """Every provenance record in the store, by group key (walks groups only, not chunks)."""
    import json

    out: dict[str, dict] = {}
    stack = [store.path]
    while stack:
        folder = stack.pop()
        for child in sorted(folder.iterdir()):
            meta = child / "zarr.json"
            if not child.is_dir():
                continue
            if not meta.exists():  # a folder between groups (older stores: folds/images/<name>)
                stack.append(child)
                continue
            try:
                doc = json.loads(meta.read_text())
            except (OSError, ValueError):
                continue  # `hpa info --check` reports it
            if doc.get("node_type") != "group":
                continue
            rec = (doc.get("attributes") or {}).get("provenance")
            if isinstance(rec, dict):
                out[child.relative_to(store.path).as_posix()] = rec
            stack.append(child)
    return dict(sorted(out.items()))
