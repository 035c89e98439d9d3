"""The ``cells`` table: one row per segmented cell, rows grouped by image.

Layout (group ``cells``; written in one go by the process that finishes segmentation):
``image`` int32 (row in the images table), ``cell_id`` int32 (the cell's value in its
image's label image), ``bbox`` int32 ``[C, 4]`` = (r0, c0, r1, c1) at the image's
original resolution, end exclusive; ``area`` int32 (pixels at original resolution);
``nucleus_bbox`` int32 ``[C, 4]``; ``border`` bool (touches the image edge);
``offsets`` int64 ``[N + 1]``: cells of image i are rows ``offsets[i]:offsets[i+1]``.
Per-cell results of later stages are arrays aligned with these rows.
"""

from __future__ import annotations

import uuid

import numpy as np
import pandas as pd

from ..errors import StoreError

GROUP = "cells"
ROW_CHUNK = 16384
COLUMNS = {
    "image": ("int32", ()),
    "cell_id": ("int32", ()),
    "bbox": ("int32", (4,)),
    "area": ("int32", ()),
    "nucleus_bbox": ("int32", (4,)),
    "border": ("bool", ()),
}
HINT = "run `hpa segment` first"


def write_cells_table(store, columns: dict[str, np.ndarray], n_images: int, params: dict | None = None) -> None:
    """Replace the cells table. ``columns`` holds every column of COLUMNS, rows sorted by
    image (then cell id). Offsets are derived from ``image``."""
    store.require_writable()
    image = np.asarray(columns["image"], dtype=np.int64)
    n = len(image)
    if n and np.any(np.diff(image) < 0):
        raise ValueError("cells must be sorted by image")
    offsets = np.zeros(n_images + 1, dtype=np.int64)
    np.add.at(offsets, image + 1, 1)
    offsets = np.cumsum(offsets)
    # write to a fresh group, then swap (readers never see half a table)
    tmp = f"{GROUP}.tmp"
    store.delete(tmp)
    store.group(tmp, create=True)
    for name, (dtype, tail) in COLUMNS.items():
        data = np.asarray(columns[name]).astype(dtype).reshape((n, *tail))
        arr = store.create_array(
            f"{tmp}/{name}", (n, *tail), dtype, (ROW_CHUNK, *tail), encoding=f"cell-{name}", overwrite=True,
            coverage="all",
        )
        if n:
            arr[:] = data
    arr = store.create_array(f"{tmp}/offsets", (n_images + 1,), "int64", (65536,), encoding="ragged-offsets",
                              coverage="all")
    arr[:] = offsets
    store.update_attrs(
        tmp, {"encoding": "hpacli-cells", "encoding_version": 1, "n": int(n), "n_images": int(n_images),
              "params": params or {}, "table_id": uuid.uuid4().hex}
    )
    import os
    import shutil

    with store.lock():
        old = store.path / f"{GROUP}.old"
        if old.exists():
            shutil.rmtree(old)
        if (store.path / GROUP).exists():
            os.replace(store.path / GROUP, old)
        os.replace(store.path / tmp, store.path / GROUP)
        if old.exists():
            # keep per-cell results that live under cells/ only if the table is unchanged
            shutil.rmtree(old)


class CellTable:
    def __init__(self, store) -> None:
        self.store = store
        if not store.has(GROUP):
            raise StoreError(f"the store {store.path} has no cells; {HINT}")
        self._cache: dict[str, np.ndarray] = {}

    @property
    def n(self) -> int:
        return int(self.store.attrs(GROUP)["n"])

    @property
    def n_images(self) -> int:
        return int(self.store.attrs(GROUP)["n_images"])

    def column(self, name: str) -> np.ndarray:
        if name not in self._cache:
            self.store.require_rows(f"{GROUP}/{name}")
            self._cache[name] = np.asarray(self.store.array(f"{GROUP}/{name}")[:])
        return self._cache[name]

    @property
    def table_id(self) -> str:
        """Changes whenever the table is rewritten; per-cell results record it to detect staleness."""
        return str(self.store.attrs(GROUP)["table_id"])

    def offsets(self) -> np.ndarray:
        return self.column("offsets")

    def rows_of(self, image: int) -> slice:
        off = self.offsets()
        return slice(int(off[image]), int(off[image + 1]))

    def df(self) -> pd.DataFrame:
        bbox = self.column("bbox")
        nb = self.column("nucleus_bbox")
        return pd.DataFrame(
            {
                "image": self.column("image"),
                "cell_id": self.column("cell_id"),
                "r0": bbox[:, 0], "c0": bbox[:, 1], "r1": bbox[:, 2], "c1": bbox[:, 3],
                "area": self.column("area"),
                "nr0": nb[:, 0], "nc0": nb[:, 1], "nr1": nb[:, 2], "nc1": nb[:, 3],
                "border": self.column("border"),
            }
        )


def exists(store) -> bool:
    return store.has(GROUP)


def covers(store, n_images: int) -> bool:
    """True when the cells table exists and was built for ``n_images`` images."""
    return store.has(f"{GROUP}/offsets") and int(store.attrs(GROUP).get("n_images", -1)) == int(n_images)


def cells_per_image(store) -> np.ndarray:
    return np.diff(CellTable(store).offsets())
