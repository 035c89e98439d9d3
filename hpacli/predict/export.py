"""Exports of stored predictions for people who are not on Kaggle.

* :func:`export_table`: one row per predicted cell: ``image`` (ID), ``cell`` (id in the
  label image), ``r0, c0, r1, c1`` (bbox at the original resolution, end exclusive),
  ``area`` (pixels at the original resolution), the 19 probabilities (one column per
  class name), ``top_class``, ``top_label`` (name) and ``top_prob``. CSV, or Parquet for
  a ``.parquet`` path (needs pyarrow: the ``hpacli[parquet]`` extra); any other extension
  is refused (:func:`export_format`, which ``hpa predict`` calls before predicting).
* :func:`write_overlays`: per image a PNG: RGB composite with cell (white) and nucleus
  (cyan) outlines (``hpa segment``'s preview) and, on each cell, its top labels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..classes import CLASS_NAMES, N_CLASSES
from ..errors import InputError

TABLE_COLUMNS: tuple[str, ...] = ("image", "cell", "r0", "c0", "r1", "c1", "area", *CLASS_NAMES,
                                  "top_class", "top_label", "top_prob")
SHORT = ("Nucleopl.", "Nuc.membr.", "Nucleoli", "Nucl.fibr.", "Speckles", "Nuc.bodies", "ER", "Golgi",
         "Int.fil.", "Actin", "Microtub.", "Mit.spindle", "Centrosome", "Plasma m.", "Mitoch.", "Aggresome",
         "Cytosol", "Vesicles", "Negative")


def prediction_frame(store, predictions: str = "default", images=None):
    """The table of :func:`export_table` as a DataFrame (only predicted cells; ``images``:
    optional image indices to keep)."""
    import pandas as pd

    from ..store import predictions as P
    from ..store.cells import CellTable

    P.check_current(store, predictions)
    probs = P.read_probs(store, predictions)
    cells = CellTable(store)
    keep = np.isfinite(probs).all(axis=1)
    image = cells.column("image")
    if images is not None:
        keep &= np.isin(image, np.asarray(list(images), dtype=np.int64))
    rows = np.flatnonzero(keep)
    ids = store.images.ids()
    bbox = cells.column("bbox")[rows]
    p = probs[rows]
    top = p.argmax(axis=1) if len(rows) else np.zeros(0, dtype=np.int64)
    data = {"image": ids[image[rows]] if len(rows) else np.zeros(0, dtype=str),
            "cell": cells.column("cell_id")[rows].astype(np.int64),
            "r0": bbox[:, 0], "c0": bbox[:, 1], "r1": bbox[:, 2], "c1": bbox[:, 3],
            "area": cells.column("area")[rows].astype(np.int64)}
    for c, name in enumerate(CLASS_NAMES):
        data[name] = p[:, c]
    data["top_class"] = top.astype(np.int64)
    data["top_label"] = np.asarray(CLASS_NAMES, dtype=object)[top] if len(rows) else np.zeros(0, dtype=object)
    data["top_prob"] = p[np.arange(len(rows)), top] if len(rows) else np.zeros(0, np.float32)
    return pd.DataFrame(data, columns=list(TABLE_COLUMNS))


EXPORT_FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
PARQUET_HINT = ("`pipx inject hpacli pyarrow` (a pipx install), or `pip install 'hpacli[parquet]'`; "
                "or export to .csv")


def export_format(path) -> str:
    """'csv' or 'parquet' for an export path; checked before any work is done: an unknown
    extension, or Parquet without pyarrow, is an :class:`InputError` that says what to do."""
    suffix = Path(path).suffix.lower()
    fmt = EXPORT_FORMATS.get(suffix)
    if fmt is None:
        raise InputError(f"--export {path}: unknown export format {suffix or '(no extension)'!s}; "
                         f"use .csv, or .parquet (with pyarrow)")
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise InputError(f"--export {path}: Parquet needs pyarrow: {PARQUET_HINT}") from None
    return fmt


def export_table(store, path, predictions: str = "default") -> int:
    """Write the per-cell table (CSV, or Parquet for ``*.parquet``/``*.pq``); returns the row count."""
    from ..outpaths import check_out_file

    fmt = export_format(path)
    path = check_out_file(path, "--export")
    df = prediction_frame(store, predictions)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    if fmt == "parquet":
        df.to_parquet(tmp, index=False)
    else:
        df.to_csv(tmp, index=False, float_format="%.6g")
    tmp.replace(path)
    return len(df)


def top_labels(probs: np.ndarray, k: int = 2, min_prob: float = 0.3) -> list[tuple[int, float]]:
    """Up to ``k`` (class, prob) with prob >= ``min_prob``, highest first (at least the top one)."""
    order = np.argsort(-probs, kind="stable")
    out = [(int(c), float(probs[c])) for c in order[:k] if probs[c] >= min_prob]
    return out or [(int(order[0]), float(probs[order[0]]))]


def write_overlays(store, out_dir, predictions: str = "default", n: int = 8, images=None,
                   min_side: int = 512) -> list[Path]:
    """PNG overlays for the first ``n`` predicted images (or the given image indices), named
    from the image IDs made safe (:func:`hpacli.outpaths.safe_file_name`): always inside
    ``out_dir``, whatever the IDs hold."""
    from PIL import Image, ImageDraw, ImageFont

    from ..outpaths import check_out_dir, safe_file_name
    from ..segment.stage import overlay_png
    from ..store import predictions as P
    from ..store.cells import CellTable
    from ..store.segmentation import read_labels

    P.check_current(store, predictions)
    out_dir = check_out_dir(out_dir, "--overlay-dir")
    probs = P.read_probs(store, predictions)
    cells = CellTable(store)
    image = cells.column("image")
    ok = np.isfinite(probs).all(axis=1)
    todo = list(images) if images is not None else list(dict.fromkeys(image[ok].tolist()))[: max(0, int(n))]
    ids = store.images.ids()
    df = store.images.df()
    try:
        font = ImageFont.load_default(size=12)
    except TypeError:  # older Pillow
        font = ImageFont.load_default()
    written = []
    for i in todo:
        i = int(i)
        nuc, lab = read_labels(store, i)
        if lab.size == 0:
            continue
        path = out_dir / safe_file_name(ids[i], ".png")
        overlay_png(store.images.read_image(i), nuc, lab, path)
        im = Image.open(path).convert("RGB")
        f = max(1, int(np.ceil(min_side / max(im.size))))
        if f > 1:
            im = im.resize((im.width * f, im.height * f), Image.NEAREST)
        draw = ImageDraw.Draw(im)
        H, W = int(df["height"].iat[i]), int(df["width"].iat[i])
        sy, sx = im.height / H, im.width / W
        sl = cells.rows_of(i)
        for r in range(sl.start, sl.stop):
            if not ok[r]:
                continue
            r0, c0, r1, c1 = cells.column("bbox")[r]
            text = "\n".join(f"{SHORT[c]} {p:.2f}" for c, p in top_labels(probs[r]))
            xy = (0.5 * (c0 + c1) * sx, 0.5 * (r0 + r1) * sy)
            draw.multiline_text(xy, text, fill=(255, 255, 0), font=font, anchor="mm", align="center",
                                stroke_width=1, stroke_fill=(0, 0, 0))
        im.save(path)
        written.append(path)
    return written


__all__ = ["TABLE_COLUMNS", "export_table", "prediction_frame", "top_labels", "write_overlays", "N_CLASSES"]
