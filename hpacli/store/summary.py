"""What ``hpa info`` shows: counts, stage records, coverage tables."""

from __future__ import annotations

import json
from collections.abc import Callable

from ..errors import StoreError
from .core import COVERAGES, format_rows
from .stages import stage_records

# stages add coverage tables here: fn(store) -> (title, rows as list of dicts) or None
SUMMARY_SECTIONS: list[Callable] = []


def summarize(store) -> dict:
    """Counts, stage records, size and the stages' coverage tables. A damaged part is shown
    as such (``hpa info --check`` says what is lost) instead of failing the whole summary."""
    counts: dict[str, object] = {}
    images = store.images
    if images.exists:
        try:
            df = images.df()
        except StoreError:
            counts["images"] = "damaged (see hpa info --check)"
        else:
            counts["images"] = len(df)
            if len(df):
                for split, n in df["split"].value_counts().sort_index().items():
                    counts[f"  {split}"] = int(n)
                counts["pixel cache"] = f"{images.cache_size}px" if images.cache_size else "none"
    size, files = store.disk_usage()
    tables = {}
    for section in SUMMARY_SECTIONS:
        try:
            out = section(store)
        except StoreError as exc:
            out = (getattr(section, "__name__", "section").strip("_").replace("_", " "), [{"problem": str(exc)}])
        if out:
            title, rows = out
            tables[title] = rows
    return {"counts": counts, "stages": stage_records(store), "bytes": size, "files": files, "tables": tables}


def check_store(store) -> dict:
    """Look for damage without reading any data: every node's metadata parses, every array
    carries its encoding stamp (``encoding`` str, ``encoding_version`` int >= 1) and a
    known ``coverage``, and every chunk that its coverage says was written exists.

    Returns ``{"problems": [(key, problem)], "arrays": n, "checked": n with a coverage}``.
    Arrays without ``coverage`` (written sparsely, or by an older hpacli that did not write
    empty chunks) are only checked for their stamps."""
    problems: list[tuple[str, str]] = []
    n_arrays = n_checked = 0
    stack = [store.path]
    while stack:
        folder = stack.pop()
        try:
            children = sorted(p for p in folder.iterdir() if p.is_dir())
        except OSError as exc:
            problems.append((_rel(store, folder), f"unreadable folder: {exc.strerror or exc}"))
            continue
        for child in children:
            meta_path = child / "zarr.json"
            if not meta_path.exists():  # a folder between groups (older stores)
                stack.append(child)
                continue
            key = child.relative_to(store.path).as_posix()
            try:
                meta = json.loads(meta_path.read_text())
            except (OSError, ValueError) as exc:
                problems.append((key, f"zarr.json is unreadable ({exc})"))
                continue
            if meta.get("node_type") == "group":
                stack.append(child)
                continue
            if meta.get("node_type") != "array":
                problems.append((key, f"zarr.json has an unknown node type {meta.get('node_type')!r}"))
                continue
            n_arrays += 1
            attrs = meta.get("attributes") or {}
            enc, ver = attrs.get("encoding"), attrs.get("encoding_version")
            if not isinstance(enc, str) or not enc:
                problems.append((key, "no encoding stamp (attribute 'encoding')"))
            if not isinstance(ver, int) or isinstance(ver, bool) or ver < 1:
                problems.append((key, f"bad encoding version stamp {ver!r}"))
            coverage = attrs.get("coverage")
            if coverage is None:
                continue
            if coverage not in COVERAGES:
                problems.append((key, f"unknown coverage stamp {coverage!r}"))
                continue
            n_checked += 1
            try:
                lost = store.lost_rows(key)
            except (StoreError, KeyError, TypeError, ValueError) as exc:
                problems.append((key, f"cannot be checked: {exc}"))
                continue
            if lost:
                n = sum(b - a for a, b in lost)
                problems.append((key, f"lost rows {format_rows(lost)} ({n} row(s); chunk files missing)"))
    return {"problems": sorted(problems), "arrays": n_arrays, "checked": n_checked}


def _rel(store, path) -> str:
    try:
        return path.relative_to(store.path).as_posix() or "."
    except ValueError:
        return str(path)


def _section(module: str) -> Callable:
    """The ``summary_section(store)`` of one layout module, imported when ``hpa info`` runs."""

    def section(store):
        from importlib import import_module

        return import_module(f"{__package__}.{module}").summary_section(store)

    section.__name__ = module
    return section


SUMMARY_SECTIONS.extend(_section(m) for m in ("segmentation", "pseudolabels", "dedup", "predictions", "denoise"))
