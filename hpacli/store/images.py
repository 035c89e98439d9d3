"""The ``images`` table: one row per registered image, plus the optional pixel cache.

Layout (group ``images``; ``n`` rows are committed, rows past ``n`` are ignored):
``id``, ``source`` (competition | public | test | dev), ``split`` (train | test | dev) as strings;
``height``, ``width`` int32; ``bit_depth`` uint8; ``labelled`` bool; ``labels`` uint8
``[N, 19]`` multi-hot; ``paths`` string ``[N, 4]`` (R, G, B, Y) relative to the
``data_root`` attribute. ``images/cache`` uint8 ``[N, 4, S, S]`` (one chunk per image)
holds downscaled RGBY pixels when ingest ran with ``--cache-size S``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..classes import N_CLASSES
from ..errors import StoreError

GROUP = "images"
ROW_CHUNK = 4096
COLUMNS_STR = ("id", "source", "split")
COLUMNS_INT = {"height": "int32", "width": "int32", "bit_depth": "uint8", "labelled": "bool"}


def plain_strings(values: np.ndarray) -> np.ndarray:
    """Zarr returns variable-length strings as numpy StringDType; give plain ``<U`` arrays."""
    if values.dtype.kind in "biuf":
        return values
    return np.array(values.tolist(), dtype=str)


class ImageTable:
    def __init__(self, store) -> None:
        self.store = store

    # ------------------------------------------------------------------ reading
    @property
    def exists(self) -> bool:
        return self.store.has(GROUP)

    @property
    def n(self) -> int:
        return int(self.store.attrs(GROUP).get("n", 0))

    @property
    def data_root(self) -> Path:
        root = self.store.attrs(GROUP).get("data_root")
        if not root:
            raise StoreError(f"the store {self.store.path} has no images; run `hpa ingest` first")
        return Path(root)

    def _col(self, name: str) -> np.ndarray:
        n = self.n
        if n == 0:
            return np.zeros(0, dtype=object)
        return plain_strings(np.asarray(self.store.array(f"{GROUP}/{name}")[:n]))

    def ids(self) -> np.ndarray:
        return self._col("id").astype(str)

    def labels(self) -> np.ndarray:
        n = self.n
        if n == 0:
            return np.zeros((0, N_CLASSES), dtype=np.uint8)
        return np.asarray(self.store.array(f"{GROUP}/labels")[:n])

    def df(self) -> pd.DataFrame:
        """The table as a DataFrame (without the label matrix: see :meth:`labels`)."""
        n = self.n
        data = {"ID": self.ids()}
        for name in COLUMNS_STR[1:]:
            data[name] = self._col(name).astype(str) if n else np.zeros(0, dtype=str)
        for name, dtype in COLUMNS_INT.items():
            data[name] = self._col(name).astype(dtype) if n else np.zeros(0, dtype=dtype)
        return pd.DataFrame(data)

    def paths(self, index: int) -> list[Path]:
        rel = np.asarray(self.store.array(f"{GROUP}/paths")[index])
        root = self.data_root
        return [root / str(p) for p in rel.tolist()]

    def index_of(self, ids) -> np.ndarray:
        lookup = {v: i for i, v in enumerate(self.ids().tolist())}
        missing = [i for i in ids if i not in lookup]
        if missing:
            raise StoreError(f"{len(missing)} image id(s) not in the store, e.g. {missing[:3]}")
        return np.array([lookup[i] for i in ids], dtype=np.int64)

    # ------------------------------------------------------------------ pixel cache
    @property
    def cache_size(self) -> int | None:
        if not self.store.has(f"{GROUP}/cache"):
            return None
        return int(self.store.attrs(f"{GROUP}/cache")["size"])

    def read_cache(self, index: int) -> np.ndarray:
        """Cached uint8 RGBY pixels ``[4, S, S]`` of one image."""
        return np.asarray(self.store.array(f"{GROUP}/cache")[index])

    def read_image(self, index: int) -> np.ndarray:
        """Full-resolution uint8 RGBY pixels ``[4, H, W]`` decoded from the PNGs."""
        from ..data.pngio import read_rgby

        return read_rgby(self.paths(index))

    # ------------------------------------------------------------------ writing
    def _ensure_arrays(self, total: int, cache_size: int | None) -> None:
        s = self.store
        group_attrs = s.attrs(GROUP) if s.has(GROUP) else {}
        if not s.has(GROUP):
            s.group(GROUP, create=True)
            s.update_attrs(GROUP, {"encoding": "hpacli-images", "encoding_version": 1, "n": 0})
            group_attrs = s.attrs(GROUP)
        for name in COLUMNS_STR:
            s.ensure_array(f"{GROUP}/{name}", (total,), str, (ROW_CHUNK,), encoding="utf8-string")
        for name, dtype in COLUMNS_INT.items():
            s.ensure_array(f"{GROUP}/{name}", (total,), dtype, (ROW_CHUNK,), encoding=f"{dtype}-column")
        s.ensure_array(f"{GROUP}/labels", (total, N_CLASSES), "uint8", (ROW_CHUNK, N_CLASSES), encoding="multi-hot")
        s.ensure_array(f"{GROUP}/paths", (total, 4), str, (ROW_CHUNK, 4), encoding="relative-path-rgby")
        if cache_size:
            existing = self.cache_size
            if existing is not None and existing != cache_size:
                raise StoreError(
                    f"the store's pixel cache is {existing}px; ingest again with --cache-size {existing} "
                    f"(or without the option)"
                )
            s.ensure_array(
                f"{GROUP}/cache",
                (total, 4, cache_size, cache_size),
                "uint8",
                (1, 4, cache_size, cache_size),
                encoding="rgby-uint8-cache",
                compression="lz4",
                attrs={"size": cache_size, "channels": ["red", "green", "blue", "yellow"]},
            )
        del group_attrs

    def set_data_root(self, root: Path) -> None:
        if not self.store.has(GROUP):
            self._ensure_arrays(0, None)
        attrs = self.store.attrs(GROUP)
        if not attrs.get("data_root"):
            self.store.update_attrs(GROUP, {"data_root": str(Path(root).resolve())})

    def relative_path(self, path: Path) -> str:
        return os.path.relpath(Path(path).resolve(), self.data_root)

    def append(
        self,
        rows: pd.DataFrame,
        labels: np.ndarray,
        paths: list[list[str]],
        cache: np.ndarray | None = None,
        cache_size: int | None = None,
    ) -> None:
        """Append rows and commit them (single writer: ingest).

        ``rows`` has columns id, source, split, height, width, bit_depth, labelled. The
        committed count is written last, so a kill leaves the table as it was.
        """
        k = len(rows)
        if k == 0:
            return
        n = self.n
        total = n + k
        self._ensure_arrays(total, cache_size if cache is not None else None)
        s = self.store
        sl = slice(n, total)
        for name in COLUMNS_STR:
            s.array(f"{GROUP}/{name}")[sl] = np.asarray(rows[name].astype(str).tolist(), dtype=object)
        for name, dtype in COLUMNS_INT.items():
            s.array(f"{GROUP}/{name}")[sl] = rows[name].to_numpy().astype(dtype)
        s.array(f"{GROUP}/labels")[sl] = labels.astype(np.uint8)
        s.array(f"{GROUP}/paths")[sl] = np.asarray(paths, dtype=object)
        if cache is not None:
            s.array(f"{GROUP}/cache")[sl] = cache
        s.update_attrs(GROUP, {"n": total})
