"""The ``images`` table: one row per registered image, plus the optional pixel cache.

Layout (group ``images``; ``n`` rows are committed, rows past ``n`` are ignored):
``id``, ``source`` (competition | public | test | dev), ``split`` (train | test | dev) as strings;
``height``, ``width`` int32; ``bit_depth`` uint8; ``labelled`` bool; ``labels`` uint8
``[N, 19]`` multi-hot; ``paths`` string ``[N, 4]`` (R, G, B, Y) relative to the
``data_root`` attribute.

Pixel cache (when any ingest ran with ``--cache-size S``): ``images/cache`` uint8
``[N, 4, S, S]`` (one chunk per image, :func:`cache_rows_per_file` images per file (a Zarr
shard); attrs ``size``, ``cache_id``) holds downscaled RGBY
pixels, and ``images/cache_ok`` bool ``[N]`` says which rows hold them. A row is present
only when its marker is set: never infer it from zeros (a row that was never written reads
back as zeros). Ingest keeps the cache complete; readers refuse (``read_cache``) or fall
back to the PNGs (``try_read_cache``) for rows without the marker. ``cache_id`` changes
whenever the cache is (re)created, so results computed from cached pixels can tell.

Writers: every change of the table's rows or of the cache happens under
:meth:`ImageTable.lock` (several ``hpa ingest`` processes may run at once).
"""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from ..classes import N_CLASSES
from ..errors import StoreError
from .core import COVER_COMMITTED as COMMITTED

GROUP = "images"
INGEST = "ingest"  # the stage record of the ingests that fill this table
ROW_CHUNK = 4096
CACHE = f"{GROUP}/cache"
CACHE_OK = f"{GROUP}/cache_ok"
LOCK = ".hpa.images.lock"  # serialises writers of the table (taken outside the store lock)
COLUMNS_STR = ("id", "source", "split")
COLUMNS_INT = {"height": "int32", "width": "int32", "bit_depth": "uint8", "labelled": "bool"}
CACHE_FILE_BYTES = 256 * 2**20  # at most this many raw bytes of cached pixels per file


def cache_rows_per_file(store, size: int) -> int:
    """Images per file of the pixel cache: the store's ``images_per_file``, fewer for large
    cache sizes (a file is rewritten whole when rows are added to it)."""
    per_image = 4 * int(size) * int(size)
    return max(1, min(int(store.layout["images_per_file"]), CACHE_FILE_BYTES // per_image))


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

    def _col(self, name: str, start: int = 0) -> np.ndarray:
        n = self.n
        if n <= start:
            return np.zeros(0, dtype=object)
        self.store.require_rows(f"{GROUP}/{name}", (start, n))
        return plain_strings(np.asarray(self.store.array(f"{GROUP}/{name}")[start:n]))

    def ids(self, start: int = 0) -> np.ndarray:
        """IDs of the committed rows (from row ``start`` on)."""
        return self._col("id", start).astype(str)

    def labels(self) -> np.ndarray:
        n = self.n
        if n == 0:
            return np.zeros((0, N_CLASSES), dtype=np.uint8)
        self.store.require_rows(f"{GROUP}/labels", (0, n))
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

    def sizes(self) -> tuple[np.ndarray, np.ndarray]:
        """(heights, widths) int64 ``[n]`` of the committed rows (original resolution)."""
        if self.n == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return self._col("height").astype(np.int64), self._col("width").astype(np.int64)

    def size_of(self, index: int) -> tuple[int, int]:
        """(height, width) of one image at original resolution."""
        i = int(index)
        self.store.require_rows(f"{GROUP}/height", (i, i + 1))
        self.store.require_rows(f"{GROUP}/width", (i, i + 1))
        return int(self.store.array(f"{GROUP}/height")[i]), int(self.store.array(f"{GROUP}/width")[i])

    def paths(self, index: int) -> list[Path]:
        self.store.require_rows(f"{GROUP}/paths", (int(index), int(index) + 1))
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
        """The cache's side in pixels, or None when the store has no pixel cache."""
        if not self.store.has(CACHE):
            return None
        return int(self.store.attrs(CACHE)["size"])

    @property
    def cache_id(self) -> str | None:
        """Changes whenever the cache is created again (results from cached pixels record it)."""
        if not self.store.has(CACHE):
            return None
        return self.store.attrs(CACHE).get("cache_id")

    def cache_present(self) -> np.ndarray:
        """bool ``[n]``: the rows whose cached pixels were written (their marker is set)."""
        n = self.n
        if n == 0 or not self.store.has(CACHE) or not self.store.has(CACHE_OK):
            return np.zeros(n, dtype=bool)  # no cache, or one written before markers existed
        ok = np.asarray(self.store.array(CACHE_OK)[:n]).astype(bool)
        rows = int(self.store.array(CACHE).shape[0])
        if len(ok) < n:
            ok = np.concatenate([ok, np.zeros(n - len(ok), bool)])
        ok[rows:] = False
        return ok

    @property
    def cache_complete(self) -> bool:
        """True when the store has a cache and every registered image has its row."""
        return self.cache_size is not None and bool(self.cache_present().all())

    def _cache_row_present(self, index: int) -> bool:
        if not self.store.has(CACHE) or not self.store.has(CACHE_OK) or not 0 <= index < self.n:
            return False
        ok = self.store.array(CACHE_OK)
        return index < ok.shape[0] and index < self.store.array(CACHE).shape[0] and bool(ok[index])

    def try_read_cache(self, index: int) -> np.ndarray | None:
        """Cached uint8 RGBY ``[4, S, S]`` of one image, or None when its row is not present."""
        if not self._cache_row_present(int(index)):
            return None
        return np.asarray(self.store.array(CACHE)[int(index)])

    def read_cache(self, index: int) -> np.ndarray:
        """Cached uint8 RGBY pixels ``[4, S, S]`` of one image; StoreError when its row is not present."""
        px = self.try_read_cache(index)
        if px is None:
            if self.cache_size is None:
                raise StoreError(f"the store {self.store.path} has no pixel cache; ingest with --cache-size "
                                 f"or read the PNGs")
            raise StoreError(
                f"image row {index} has no pixels in the store's cache (an earlier ingest was interrupted, "
                f"or the store predates cache markers); run `hpa ingest` on the dataset again to fill the cache"
            )
        return px

    def read_image(self, index: int) -> np.ndarray:
        """Full-resolution uint8 RGBY pixels ``[4, H, W]`` decoded from the PNGs."""
        from ..io.png import read_rgby

        return read_rgby(self.paths(index))

    # ------------------------------------------------------------------ writing
    @contextmanager
    def lock(self):
        """Exclusive between processes: hold it to append rows or write the cache."""
        self.store.require_writable()
        if not self.store.path.is_dir():
            raise StoreError(f"{self.store.path} is not a store folder")
        with self.store.lock(LOCK):
            yield

    def check_readable(self) -> None:
        """StoreError when the committed rows do not read back as IDs (missing ``id`` chunks
        read back as empty strings): appending to such a table would register every image again."""
        n = self.n
        if n == 0:
            return
        ids = self.ids()
        empty = int((ids == "").sum())
        if len(ids) != n or empty:
            raise StoreError(
                f"the store {self.store.path} says it holds {n} images but {empty or n - len(ids)} of their IDs "
                f"read back empty (chunks of images/id missing or damaged); restore the store or ingest into a "
                f"new one"
            )
        if len(set(ids.tolist())) != n:
            raise StoreError(f"the store {self.store.path} lists some image IDs twice (images/id is damaged); "
                             f"restore the store or ingest into a new one")

    def _ensure_arrays(self, total: int) -> None:
        s = self.store
        if not s.has(GROUP):
            s.group(GROUP, create=True)
            s.update_attrs(GROUP, {"encoding": "hpacli-images", "encoding_version": 1, "n": 0})
        for name in COLUMNS_STR:
            s.ensure_array(f"{GROUP}/{name}", (total,), str, (ROW_CHUNK,), encoding="utf8-string", coverage=COMMITTED)
        for name, dtype in COLUMNS_INT.items():
            s.ensure_array(f"{GROUP}/{name}", (total,), dtype, (ROW_CHUNK,), encoding=f"{dtype}-column",
                            coverage=COMMITTED)
        s.ensure_array(f"{GROUP}/labels", (total, N_CLASSES), "uint8", (ROW_CHUNK, N_CLASSES), encoding="multi-hot",
                        coverage=COMMITTED)
        s.ensure_array(f"{GROUP}/paths", (total, 4), str, (ROW_CHUNK, 4), encoding="relative-path-rgby",
                        coverage=COMMITTED)
        size = self.cache_size
        if size is not None:
            self._ensure_cache_arrays(total, size)

    def _ensure_cache_arrays(self, total: int, size: int) -> None:
        from .work import shards_of

        s = self.store
        s.ensure_array(
            CACHE, (total, 4, size, size), "uint8", (1, 4, size, size), encoding="rgby-uint8-cache",
            compression="lz4", shards=shards_of((1, 4, size, size), cache_rows_per_file(s, size)),
            attrs={"size": size, "channels": ["red", "green", "blue", "yellow"], "cache_id": uuid.uuid4().hex,
                   "present": CACHE_OK},
        )
        if not s.has(CACHE_OK):
            # a cache written before markers existed: none of its rows is trusted (they are filled again),
            # and it gets a new cache_id so that results computed from it are recomputed
            s.ensure_array(CACHE_OK, (total,), "bool", (ROW_CHUNK,), encoding="bool-column", fill_value=False)
            s.update_attrs(CACHE, {"cache_id": uuid.uuid4().hex, "present": CACHE_OK})
        else:
            s.ensure_array(CACHE_OK, (total,), "bool", (ROW_CHUNK,), encoding="bool-column", fill_value=False)

    def set_cache_size(self, size: int | None, rebuild: bool = False) -> int | None:
        """Settle the cache size for an ingest (call under :meth:`lock`); returns the size in use.

        ``None`` keeps the store's cache (new images are cached at its size) or none. A size
        when the store has none creates the cache (rows of earlier images are filled by
        the ingest). Another size than the store's is refused unless ``rebuild``, which
        drops the cache and starts a new one of that size (every row is filled again).
        """
        existing = self.cache_size
        if size is None:
            size = existing
        elif existing is not None and (existing != size or rebuild):
            if not rebuild:
                raise StoreError(
                    f"the store's pixel cache is {existing}px, not {size}px; ingest with --cache-size {existing} "
                    f"(or without it), or pass --rebuild-cache to replace the cache with {size}px "
                    f"(every image is read again)"
                )
            self.store.delete(CACHE)
            self.store.delete(CACHE_OK)
        if size is not None:
            if not self.store.has(GROUP):
                self._ensure_arrays(0)
            self._ensure_cache_arrays(self.n, size)
        return size

    def write_cache_rows(self, rows: np.ndarray, pixels: np.ndarray) -> None:
        """Write cached pixels of existing rows and set their markers (call under :meth:`lock`)."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            return
        cache, ok = self.store.array(CACHE), self.store.array(CACHE_OK)
        per_file = int(cache.shards[0]) if cache.shards is not None else 1
        by_file: dict[int, list[int]] = {}
        for k, r in enumerate(rows.tolist()):
            by_file.setdefault(r // per_file, []).append(k)
        for ks in by_file.values():  # one write per file: a shard file is rewritten whole by each write
            rs = rows[ks]
            a, b = int(rs.min()), int(rs.max()) + 1
            part = np.asarray(cache[a:b]).copy() if b - a > len(ks) else np.empty((b - a, *cache.shape[1:]), np.uint8)
            for k, r in zip(ks, rs.tolist()):
                part[r - a] = pixels[k]
            cache[a:b] = part
        lo, hi = int(rows.min()), int(rows.max()) + 1
        marks = np.asarray(ok[lo:hi]).astype(bool)
        marks[rows - lo] = True
        ok[lo:hi] = marks  # markers after the pixels: a kill leaves rows unmarked, never marked and empty

    def set_data_root(self, root: Path) -> None:
        if not self.store.has(GROUP):
            self._ensure_arrays(0)
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
        """Append rows and commit them (call under :meth:`lock`).

        ``rows`` has columns id, source, split, height, width, bit_depth, labelled. When the
        store has a cache, ``cache`` pixels of the same size are written with their markers;
        without them (or of another size) the new rows are left unmarked for
        ingest to fill. The committed count is written last, so a kill leaves the table
        as it was.
        """
        k = len(rows)
        if k == 0:
            return
        n = self.n
        total = n + k
        self._ensure_arrays(total)
        s = self.store
        sl = slice(n, total)
        for name in COLUMNS_STR:
            s.array(f"{GROUP}/{name}")[sl] = np.asarray(rows[name].astype(str).tolist(), dtype=object)
        for name, dtype in COLUMNS_INT.items():
            s.array(f"{GROUP}/{name}")[sl] = rows[name].to_numpy().astype(dtype)
        s.array(f"{GROUP}/labels")[sl] = labels.astype(np.uint8)
        s.array(f"{GROUP}/paths")[sl] = np.asarray(paths, dtype=object)
        store_size = self.cache_size
        if store_size is not None:
            ok = s.array(CACHE_OK)
            if cache is not None and cache_size == store_size:
                s.array(CACHE)[sl] = cache
                ok[sl] = np.ones(k, bool)
            else:
                ok[sl] = np.zeros(k, bool)  # rows past an old n may hold markers of an interrupted run
        s.update_attrs(GROUP, {"n": total})
