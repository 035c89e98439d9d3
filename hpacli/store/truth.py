"""Cell-level truth of (synthetic) images, kept with the images table so stages can score cells.

Layout (group ``truth``; rows aligned with the ``images`` table):
``prediction_string`` str ``[N]``: the image's truth in the submission format (space-
separated triples ``label confidence encodedMask``, one per (cell, label));
``has_truth`` bool ``[N]``. ``hpa ingest ROOT`` fills it from ``ROOT/train_truth.csv``
(what ``hpa synth`` writes); rows of images that are not in the store are ignored.

Only the training images' truth enters the store, and only analyses read it (the
recovery counts of ``hpa demo``, the upper-bound ``--targets truth`` of ``hpa
train-cell``, ``--best-metric cell_map`` when asked for by name). The truth of the
scored splits (``dev_truth.csv``, ``test_truth.csv``) stays in its files, read by
``hpa evaluate`` alone, so nothing a run decides can see it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..classes import N_CLASSES
from ..errors import InputError, StoreError

GROUP = "truth"
ROW_CHUNK = 4096
TRUTH_FILES = ("train_truth.csv",)
COLUMNS = ("ID", "ImageWidth", "ImageHeight", "PredictionString")
HINT = "ingest a dataset with train_truth.csv (e.g. one made by `hpa synth`)"


def parse_prediction_string(text: str) -> list[tuple[int, float, str]]:
    """``"l c mask l c mask ..."`` → [(label, confidence, mask)]; raises ValueError."""
    parts = str(text or "").split()
    if len(parts) % 3:
        raise ValueError(f"{len(parts)} fields: not a list of 'label confidence mask' triples")
    out = []
    for i in range(0, len(parts), 3):
        try:
            label = int(parts[i])
        except ValueError:
            raise ValueError(f"label {parts[i]!r} is not an integer") from None
        if not 0 <= label < N_CLASSES:
            raise ValueError(f"label {label} is outside 0..{N_CLASSES - 1}")
        try:
            conf = float(parts[i + 1])
        except ValueError:
            raise ValueError(f"confidence {parts[i + 1]!r} is not a number") from None
        out.append((label, conf, parts[i + 2]))
    return out


def write_truth(store, df: pd.DataFrame) -> int:
    """Store the truth rows of images that are in the store (others are ignored).

    Existing truth of images not in ``df`` is kept. Returns the number of rows stored.
    """
    store.require_writable()
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"truth lacks column(s) {', '.join(missing)} (has: {', '.join(map(str, df.columns))})")
    table = store.images
    n = table.n
    ids = table.ids()
    lookup = {v: i for i, v in enumerate(ids.tolist())}
    meta = table.df() if n else None
    strings = read_strings(store, n)
    has = read_has(store, n)
    stored = 0
    for image_id, w, h, text in zip(df["ID"], df["ImageWidth"], df["ImageHeight"], df["PredictionString"]):
        i = lookup.get(str(image_id))
        if i is None:
            continue
        text = "" if text is None or (isinstance(text, float) and np.isnan(text)) else str(text)
        try:
            width, height = int(w), int(h)
        except (TypeError, ValueError):
            raise InputError(f"truth of image {image_id}: ImageWidth/ImageHeight {w!r}/{h!r} are not integers") from None
        if (width, height) != (int(meta["width"].iat[i]), int(meta["height"].iat[i])):
            raise InputError(
                f"truth of image {image_id}: size {width}x{height}, but the image is "
                f"{meta['width'].iat[i]}x{meta['height'].iat[i]}"
            )
        try:
            parse_prediction_string(text)
        except ValueError as exc:
            raise InputError(f"truth of image {image_id}: {exc}") from None
        strings[i] = text
        has[i] = True
        stored += 1
    if stored == 0 and not store.has(f"{GROUP}/has_truth"):
        return 0
    store.group(GROUP, create=True)
    ps = store.ensure_array(f"{GROUP}/prediction_string", (n,), str, (ROW_CHUNK,), encoding="submission-prediction-string")
    ht = store.ensure_array(f"{GROUP}/has_truth", (n,), "bool", (ROW_CHUNK,), encoding="bool-column", fill_value=False)
    if n:
        ps[:n] = np.asarray(strings, dtype=object)
        ht[:n] = has
    store.update_attrs(GROUP, {"encoding": "hpacli-truth", "encoding_version": 1, "n_with_truth": int(has.sum())})
    return stored


def read_strings(store, n: int | None = None) -> np.ndarray:
    n = store.images.n if n is None else n
    out = np.full(n, "", dtype=object)
    if store.has(f"{GROUP}/prediction_string") and n:
        arr = store.array(f"{GROUP}/prediction_string")
        k = min(n, arr.shape[0])
        out[:k] = np.asarray(arr[:k], dtype=object)
    return out


def read_has(store, n: int | None = None) -> np.ndarray:
    n = store.images.n if n is None else n
    out = np.zeros(n, dtype=bool)
    if store.has(f"{GROUP}/has_truth") and n:
        arr = store.array(f"{GROUP}/has_truth")
        k = min(n, arr.shape[0])
        out[:k] = np.asarray(arr[:k], dtype=bool)
    return out


def has_truth(store) -> np.ndarray:
    """bool ``[N]``: which images of the store have cell-level truth."""
    return read_has(store)


def read_truth(store) -> pd.DataFrame:
    """The truth of the images that have it: ID, ImageWidth, ImageHeight, PredictionString
    (in images-table order)."""
    n = store.images.n
    has = read_has(store, n)
    if not has.any():
        return pd.DataFrame({c: pd.Series(dtype=object if c in ("ID", "PredictionString") else "int64")
                             for c in COLUMNS})
    meta = store.images.df()
    strings = read_strings(store, n)
    idx = np.flatnonzero(has)
    return pd.DataFrame({
        "ID": meta["ID"].to_numpy()[idx],
        "ImageWidth": meta["width"].to_numpy()[idx].astype(np.int64),
        "ImageHeight": meta["height"].to_numpy()[idx].astype(np.int64),
        "PredictionString": strings[idx].astype(str),
    })


def truth_label_images(store, image_index: int) -> tuple[np.ndarray, dict[int, set[int]]]:
    """Decode one image's truth: an int32 label image (each distinct mask gets an id 1, 2, ...
    in order of first appearance; where masks overlap the later one wins) and
    ``{cell id: set of classes}``. For many images, :class:`TruthReader` reads the table once."""
    return TruthReader(store).label_images(image_index)


class TruthReader:
    """The truth of many images: the images' sizes, the truth strings and which images have
    truth are read from the store once (not once per image)."""

    def __init__(self, store) -> None:
        self.n = store.images.n
        meta = store.images.df()
        self.height = meta["height"].to_numpy()
        self.width = meta["width"].to_numpy()
        self.has = read_has(store, self.n)
        self.strings = read_strings(store, self.n)

    def label_images(self, image_index: int) -> tuple[np.ndarray, dict[int, set[int]]]:
        """:func:`truth_label_images` of one image."""
        if not 0 <= image_index < self.n:
            raise StoreError(f"image index {image_index} is outside 0..{self.n - 1}")
        if not self.has[image_index]:
            raise StoreError(f"image {image_index} has no cell-level truth; {HINT}")
        return _decode(str(self.strings[image_index]), int(self.height[image_index]), int(self.width[image_index]),
                       image_index)


def _decode(text: str, h: int, w: int, image_index: int) -> tuple[np.ndarray, dict[int, set[int]]]:
    from ..io.masks import decode_mask

    labels = np.zeros((h, w), dtype=np.int32)
    classes: dict[int, set[int]] = {}
    ids: dict[str, int] = {}
    for label, _conf, mask in parse_prediction_string(text):
        k = ids.get(mask)
        if k is None:
            k = len(ids) + 1
            ids[mask] = k
            try:
                labels[decode_mask(mask, h, w)] = k
            except ValueError as exc:
                raise StoreError(f"truth of image {image_index}: {exc}") from None
            classes[k] = set()
        classes[k].add(label)
    return labels, classes


def ingest_truth_files(store, root: Path) -> int:
    """Read ``root/train_truth.csv`` when present and store it (scored splits' truth stays out)."""
    frames = []
    for name in TRUTH_FILES:
        path = Path(root) / name
        if not path.exists():
            continue
        try:
            df = pd.read_csv(path, dtype=str, keep_default_na=False)
        except Exception as exc:
            raise InputError(f"cannot read {path}: {exc}") from None
        missing = [c for c in COLUMNS if c not in df.columns]
        if missing:
            raise InputError(f"{path.name} lacks column(s) {', '.join(missing)} (has: {', '.join(df.columns)})")
        frames.append(df)
    if not frames:
        return 0
    return write_truth(store, pd.concat(frames, ignore_index=True))
