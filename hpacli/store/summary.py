"""What ``hpa info`` shows: counts, stage records, coverage tables."""

from __future__ import annotations

from collections.abc import Callable

from .stages import stage_records

# stages add coverage tables here: fn(store) -> (title, rows as list of dicts) or None
SUMMARY_SECTIONS: list[Callable] = []


def summarize(store) -> dict:
    counts: dict[str, object] = {}
    images = store.images
    if images.exists:
        df = images.df()
        counts["images"] = len(df)
        if len(df):
            for split, n in df["split"].value_counts().sort_index().items():
                counts[f"  {split}"] = int(n)
            counts["pixel cache"] = f"{images.cache_size}px" if images.cache_size else "none"
    size, files = store.disk_usage()
    tables = {}
    for section in SUMMARY_SECTIONS:
        out = section(store)
        if out:
            title, rows = out
            tables[title] = rows
    return {"counts": counts, "stages": stage_records(store), "bytes": size, "files": files, "tables": tables}


def _pseudolabel_coverage(store):
    from .pseudolabels import summary_section

    return summary_section(store)


SUMMARY_SECTIONS.append(_pseudolabel_coverage)


def _preprocessing(store):
    from .dedup import summary_section

    return summary_section(store)


SUMMARY_SECTIONS.append(_preprocessing)


def _predictions(store):
    from .predictions import summary_section

    return summary_section(store)


SUMMARY_SECTIONS.append(_predictions)


def _denoise_summary(store):
    from .denoise import summary_section

    return summary_section(store)


SUMMARY_SECTIONS.append(_denoise_summary)
