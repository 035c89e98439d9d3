"""Open, create and check an hpacli store: one Zarr v3 directory that holds every stage's state.

This package is the only code that knows the layout. Everything stored carries an
``encoding`` and ``encoding_version`` attribute; the root carries the schema version.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from ..errors import StoreError, StoreVersionError

SCHEMA_NAME = "hpacli-store"
SCHEMA_VERSION = 1
DEFAULT_STORE = "hpa.zarr"
LOCK_FILE = ".hpa.lock"


def codec(kind: str = "zstd") -> BloscCodec:
    """Compression for stored arrays: zstd for tables, lz4 for pixels (fast to decode)."""
    if kind == "lz4":
        return BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")
    return BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")


MAX_NAME = 128
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_name(name: str, what: str = "run") -> str:
    """A user-chosen name (a run, a predictions set, a selection, a fold set) that becomes
    one folder of the store: letters, digits, ``.``, ``-`` and ``_``, starting with a letter
    or digit, at most :data:`MAX_NAME` characters (file systems allow 255 bytes)."""
    text = str(name)
    if len(text) > MAX_NAME:
        raise StoreError(f"the {what} name is {len(text)} characters long; use at most {MAX_NAME}")
    if not _NAME.fullmatch(text):
        raise StoreError(f"bad {what} name {text!r}: use letters, digits, '.', '-' and '_', starting with a letter "
                         "or digit")
    return text


def child_key(group: str, name: str, what: str = "run") -> str:
    """``group/name`` for a user-chosen name, checked by :func:`check_name` so that it
    stays one path component of the store."""
    return f"{group}/{check_name(name, what)}"


# Which chunks of an array must exist (array attribute ``coverage``); hpacli writes empty
# chunks too (``write_empty_chunks``), so a missing chunk inside the covered rows is damage:
COVER_ALL = "all"  # written whole: every chunk
COVER_DONE = "done"  # rows of the done blocks of the BlockWork markers ``<parent group>/_done``
COVER_COMMITTED = "committed"  # rows below the parent group's attribute ``n``
COVERAGES = (COVER_ALL, COVER_DONE, COVER_COMMITTED)
ARRAY_CONFIG = {"write_empty_chunks": True}
# the newest version of each encoding this hpacli reads (every stamp not listed: 1)
ENCODING_VERSIONS: dict[str, int] = {}

# Files at scale: per-image and per-cell arrays keep one chunk per image (or block of cells)
# inside Zarr v3 shards (one file) of this many rows; a sharded stage's processes own whole
# files (hpacli.store.work.BlockWork groups its blocks by file), so no file has two writers.
# Fixed when the store is created (root attribute ``layout``); stores without it use these.
IMAGES_PER_FILE = 512
CELLS_PER_FILE = 16384
LAYOUT_KEYS = ("images_per_file", "cells_per_file")
PARTIAL_SUFFIX = ".partial"  # zarr's LocalStore writes a chunk file aside under this suffix, then renames it



def disk_usage(*paths) -> tuple[int, int]:
    """(bytes, files) under ``paths`` (files or folders); files that vanish meanwhile are skipped."""
    total = files = 0
    for path in map(Path, paths):
        if path.is_file():
            total, files = total + path.stat().st_size, files + 1
            continue
        for dirpath, _, names in os.walk(path):
            for name in names:
                try:
                    total += os.path.getsize(os.path.join(dirpath, name))
                    files += 1
                except OSError:
                    pass
    return total, files

class Store:
    """A handle on one store directory. Use :func:`open_store`."""

    def __init__(self, path: str | os.PathLike, mode: str = "r") -> None:
        self.path = Path(path)
        self.mode = mode
        self.root = self._open_root()

    # ---------------------------------------------------------------- open / schema
    def _open_root(self) -> zarr.Group:
        path = self.path
        if path.exists() and not path.is_dir():
            raise StoreError(f"{path} is a file, not an hpacli store (a folder); check --store")
        try:
            exists = (path / "zarr.json").exists()
            if not exists and self.mode == "a" and path.exists() and any(path.iterdir()):
                raise StoreError(f"{path} exists and is not empty, and is not an hpacli store")
        except OSError as exc:
            raise StoreError(f"cannot read the store folder {path}: {exc.strerror or exc}") from None
        if not exists:
            if self.mode != "a":
                if path.exists():
                    raise StoreError(f"{path} is not an hpacli store (no zarr.json); create one with `hpa ingest`")
                raise StoreError(f"no store at {path}; create one with `hpa ingest DATA --store {path}` first")
            self._create_root()
        try:
            meta = json.loads((path / "zarr.json").read_text())
        except (OSError, ValueError) as exc:
            raise StoreError(f"{path}/zarr.json is unreadable: {exc}") from None
        if meta.get("zarr_format") != 3:
            raise StoreError(f"{path} is a Zarr v{meta.get('zarr_format')} store; hpacli stores are Zarr v3")
        info = (meta.get("attributes") or {}).get("hpacli")
        if not isinstance(info, dict) or info.get("schema") != SCHEMA_NAME:
            raise StoreError(f"{path} is a Zarr store but not an hpacli store")
        version = info.get("schema_version")
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise StoreVersionError(
                f"{path} was written with store schema {version} (hpacli {info.get('created_with')}); "
                f"this hpacli reads schema {SCHEMA_VERSION} or older. Upgrade hpacli to open it."
            )
        zmode = "r" if self.mode == "r" else "r+"
        return zarr.open_group(str(path), mode=zmode, zarr_format=3)

    def _create_root(self) -> None:
        """Write a new store's root in a temporary folder beside it and rename it into place:
        two processes creating the same store at once (two ``hpa ingest``) both end up
        opening one complete store, never a half-written root."""
        import shutil
        import tempfile

        from .. import __version__

        path = self.path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.new-", dir=path.parent))
        try:
            root = zarr.open_group(str(tmp), mode="a", zarr_format=3)
            root.attrs.update(
                {"hpacli": {"schema": SCHEMA_NAME, "schema_version": SCHEMA_VERSION, "created_with": __version__},
                 "layout": {"images_per_file": IMAGES_PER_FILE, "cells_per_file": CELLS_PER_FILE}}
            )
            try:
                os.rename(tmp, path)  # atomic; replaces an empty folder, fails on a filled one
            except OSError:
                if not (path / "zarr.json").exists():  # not another process's store either
                    raise StoreError(f"cannot create the store at {path}: it exists and is not an hpacli store") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _zmode(self) -> str:
        return "r" if self.mode == "r" else "r+"

    @property
    def layout(self) -> dict:
        """Rows per file of per-image and per-cell arrays (``images_per_file``, ``cells_per_file``)."""
        root = self.attrs("")
        layout = root.get("layout") if isinstance(root.get("layout"), dict) else {}
        out = {"images_per_file": IMAGES_PER_FILE, "cells_per_file": CELLS_PER_FILE}
        for key in LAYOUT_KEYS:
            value = layout.get(key)
            if isinstance(value, int) and value >= 1:
                out[key] = value
        return out

    def set_layout(self, **values: int | None) -> None:
        """Set ``images_per_file`` / ``cells_per_file`` (None: keep). Only before any array
        uses them: a store with images keeps the values it was created with."""
        want = {k: int(v) for k, v in values.items() if v is not None}
        for key, value in want.items():
            if key not in LAYOUT_KEYS:
                raise ValueError(f"unknown layout setting {key!r}")
            if value < 1:
                raise StoreError(f"--{key.replace('_', '-')} must be at least 1")
        if not want:
            return
        have = self.layout
        if all(have[k] == v for k, v in want.items()):
            return
        if self.has("images/id"):
            diff = ", ".join(f"{k.replace('_', ' ')} {have[k]}" for k, v in want.items() if have[k] != v)
            raise StoreError(f"the store {self.path} was created with {diff}; these are fixed when a store is "
                             f"created (leave the option out, or ingest into a new store)")
        root = self.attrs("")
        self.update_attrs("", {"layout": {**(root.get("layout") or {}), **want}})

    @property
    def schema_version(self) -> int:
        return int(self.root.attrs["hpacli"]["schema_version"])

    def require_writable(self) -> None:
        if self.mode == "r":
            raise StoreError(f"store {self.path} was opened read-only")

    # ---------------------------------------------------------------- locking
    @contextmanager
    def lock(self, name: str = LOCK_FILE, busy: str | None = None) -> Iterator[None]:
        """An exclusive lock between processes, for metadata changes only (create, resize,
        attributes). Data chunks of disjoint shards are written without it. Stages that
        must serialise a longer step (while the store lock is taken inside it) pass a
        ``name`` of their own. With ``busy`` (a message), a lock held by another process
        is a StoreError with that message instead of a wait."""
        fd = os.open(self.path / name, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (fcntl.LOCK_NB if busy else 0))
            except BlockingIOError:
                raise StoreError(busy) from None
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    # ---------------------------------------------------------------- arrays and groups
    def has(self, key: str) -> bool:
        return (self.path / key / "zarr.json").exists()

    def array(self, key: str, hint: str | None = None, encoding: str | None = None) -> zarr.Array:
        """The array at ``key``; its stamp is checked (:meth:`check_stamp`): an array of
        another ``encoding`` (when given) or of a newer encoding version is refused."""
        if not self.has(key):
            msg = f"the store {self.path} has no {key!r}"
            raise StoreError(f"{msg}; {hint}" if hint else msg)
        node = zarr.open_array(str(self.path / key), mode=self._zmode(), zarr_format=3)
        self.check_stamp(key, encoding, node.attrs)
        return node.with_config(ARRAY_CONFIG)

    def check_stamp(self, key: str, encoding: str | None = None, attrs=None) -> None:
        """StoreError (one line) when the node at ``key`` is stamped with another encoding
        than ``encoding`` (when given) or with an encoding version this hpacli does not
        know (:data:`ENCODING_VERSIONS`, default 1). Nodes without a stamp (older
        stores) pass; ``hpa info --check`` lists them."""
        attrs = self.attrs(key) if attrs is None else attrs
        enc, ver = attrs.get("encoding"), attrs.get("encoding_version")
        # groups stamped by the stage record of an older hpacli ("hpacli-stage-<stage>") pass
        legacy = isinstance(enc, str) and enc.startswith("hpacli-stage-")
        if encoding is not None and enc is not None and enc != encoding and not legacy:
            raise StoreError(f"the store {self.path} holds {enc!r} at {key}, not the {encoding!r} hpacli expects "
                             "there; was it written by another program?")
        known = ENCODING_VERSIONS.get(str(enc), 1)
        if isinstance(ver, int) and not isinstance(ver, bool) and ver > known:
            raise StoreVersionError(f"{key} in {self.path} is {enc!r} version {ver}; this hpacli reads version "
                                    f"{known} or older. Upgrade hpacli to read it.")

    def group(self, key: str, create: bool = False) -> zarr.Group:
        if not self.has(key):
            if not create:
                raise StoreError(f"the store {self.path} has no group {key!r}")
            self.require_writable()
            with self.lock():
                parts = key.split("/")
                for i in range(1, len(parts) + 1):  # every group on the way, so readers can walk down
                    sub = "/".join(parts[:i])
                    if not self.has(sub):
                        zarr.open_group(str(self.path / sub), mode="a", zarr_format=3)
        return zarr.open_group(str(self.path / key), mode=self._zmode(), zarr_format=3)

    def create_array(
        self,
        key: str,
        shape: tuple[int, ...],
        dtype: Any,
        chunks: tuple[int, ...],
        *,
        encoding: str,
        encoding_version: int = 1,
        fill_value: Any = 0,
        compression: str = "zstd",
        attrs: dict | None = None,
        overwrite: bool = False,
        coverage: str | None = None,
        shards: tuple[int, ...] | None = None,
    ) -> zarr.Array:
        """Create (or with ``overwrite`` replace) an array stamped with its encoding.

        ``coverage`` says which chunks must exist once written (:data:`COVERAGES`; None:
        written sparsely, not checked): ``hpa info --check`` and the readers use it to tell
        lost chunks from rows never written. ``shards`` (a multiple of ``chunks``): many
        chunks in one file (Zarr v3 sharding); only one process may write a shard at a time."""
        self.require_writable()
        with self.lock():
            return self._create_array_locked(
                key, shape, dtype, chunks, encoding, encoding_version, fill_value, compression, attrs, overwrite,
                coverage, shards,
            )

    def _create_array_locked(
        self, key, shape, dtype, chunks, encoding, encoding_version, fill_value, compression, attrs, overwrite,
        coverage=None, shards=None,
    ) -> zarr.Array:
        if coverage is not None and coverage not in COVERAGES:
            raise ValueError(f"coverage must be one of {COVERAGES} or None, not {coverage!r}")
        parent, _, name = key.rpartition("/")
        group = zarr.open_group(str(self.path / parent) if parent else str(self.path), mode="a", zarr_format=3)
        is_str = dtype is str or dtype == "str"
        kwargs: dict[str, Any] = {}
        if not is_str:
            kwargs["compressors"] = codec(compression)
        shape = tuple(int(s) for s in shape)
        chunks = tuple(max(1, int(c)) for c in chunks)
        shards = _check_shards(chunks, shards)
        if shards is not None:
            kwargs["shards"] = shards
        stamp = {"encoding": encoding, "encoding_version": encoding_version, **(attrs or {})}
        if coverage is not None:
            stamp["coverage"] = coverage
        arr = group.create_array(
            name,
            shape=shape,
            dtype=str if is_str else np.dtype(dtype),
            chunks=chunks,
            fill_value="" if is_str else fill_value,
            overwrite=overwrite,
            attributes=stamp,
            config=ARRAY_CONFIG,
            **kwargs,
        )
        return arr

    def ensure_array(
        self,
        key: str,
        shape: tuple[int, ...],
        dtype: Any,
        chunks: tuple[int, ...],
        *,
        encoding: str,
        encoding_version: int = 1,
        fill_value: Any = 0,
        compression: str = "zstd",
        attrs: dict | None = None,
        coverage: str | None = None,
        shards: tuple[int, ...] | None = None,
    ) -> zarr.Array:
        """Open ``key`` if it exists (growing axis 0 to ``shape[0]``), else create it.

        Safe when several shard processes call it at once (it runs under the store lock).
        An existing array with another dtype, chunking, sharding or trailing shape is an
        error, except that an array written without shards (an older store) is kept as it is.
        """
        self.require_writable()
        with self.lock():
            if not self.has(key):
                return self._create_array_locked(
                    key, shape, dtype, chunks, encoding, encoding_version, fill_value, compression, attrs, False,
                    coverage, shards,
                )
            arr = zarr.open_array(str(self.path / key), mode="r+", zarr_format=3).with_config(ARRAY_CONFIG)
            want_str = dtype is str or dtype == "str"
            same_dtype = (arr.dtype.kind in "UTO") if want_str else arr.dtype == np.dtype(dtype)
            want_shards = _check_shards(tuple(max(1, int(c)) for c in chunks), shards)
            same_shards = arr.shards is None or (want_shards is not None and tuple(arr.shards) == want_shards)
            if not same_dtype or tuple(arr.chunks) != tuple(chunks) or tuple(arr.shape[1:]) != tuple(shape[1:]) \
                    or not same_shards:
                raise StoreError(
                    f"{key} exists with dtype {arr.dtype}, shape {arr.shape}, chunks {arr.chunks}, shards "
                    f"{arr.shards}; expected {dtype}, {shape}, {chunks}, {want_shards}. Was it written by another "
                    f"version or with other options?"
                )
            if arr.shape[0] < shape[0]:
                arr.resize((shape[0], *arr.shape[1:]))
            return arr

    # ---------------------------------------------------------------- lost chunks
    def _array_meta(self, key: str) -> dict:
        try:
            return json.loads((self.path / key / "zarr.json").read_text())
        except FileNotFoundError:
            raise StoreError(f"the store {self.path} has no {key!r}") from None
        except (OSError, ValueError) as exc:
            raise StoreError(f"the store {self.path} is damaged: {key}/zarr.json is unreadable ({exc})") from None

    def _chunk_path(self, key: str, meta: dict, index: tuple[int, ...]) -> Path:
        enc = meta.get("chunk_key_encoding") or {}
        cfg = enc.get("configuration") or {}
        if enc.get("name", "default") == "v2":
            return self.path / key / cfg.get("separator", ".").join(map(str, index) or ["0"])
        return self.path / key / cfg.get("separator", "/").join(("c", *map(str, index)))

    def missing_rows(self, key: str, rows: tuple[int, int] | None = None) -> list[tuple[int, int]]:
        """Row ranges ``[start, stop)`` of ``key`` (within ``rows``, default all) whose chunk
        files are missing. Only looks at file names: cheap enough for every reader."""
        meta = self._array_meta(key)
        shape = [int(v) for v in meta["shape"]]
        if not shape:
            return [] if self._chunk_path(key, meta, ()).exists() else [(0, 1)]
        chunks = [int(v) for v in meta["chunk_grid"]["configuration"]["chunk_shape"]]
        start, stop = (0, shape[0]) if rows is None else (max(0, int(rows[0])), min(shape[0], int(rows[1])))
        if stop <= start or any(v == 0 for v in shape):
            return []
        from itertools import product

        rest = [range((n + c - 1) // c) for n, c in zip(shape[1:], chunks[1:])]
        out: list[tuple[int, int]] = []
        for ci in range(start // chunks[0], (stop - 1) // chunks[0] + 1):
            if not all(self._chunk_path(key, meta, (ci, *tail)).exists() for tail in product(*rest)):
                lo, hi = max(start, ci * chunks[0]), min(stop, (ci + 1) * chunks[0])
                if out and out[-1][1] == lo:
                    out[-1] = (out[-1][0], hi)
                else:
                    out.append((lo, hi))
        return out

    def covered_rows(self, key: str) -> list[tuple[int, int]] | None:
        """Row ranges that must have been written, by the array's ``coverage`` attribute;
        None when the array does not say (written sparsely, or by an older hpacli)."""
        meta = self._array_meta(key)
        coverage = (meta.get("attributes") or {}).get("coverage")
        n = int(meta["shape"][0]) if meta.get("shape") else 1
        parent = key.rpartition("/")[0]
        if coverage == COVER_ALL:
            return [(0, n)]
        if coverage == COVER_COMMITTED:
            return [(0, min(n, int(self.attrs(parent).get("n", 0))))]
        if coverage == COVER_DONE:
            done_key = f"{parent}/_done"
            if not self.has(done_key):
                return []
            block = int(self.attrs(done_key).get("block_size", 0))
            if block < 1:
                return None
            done = np.asarray(self.array(done_key)[:]).astype(bool)
            out: list[tuple[int, int]] = []
            for b in np.flatnonzero(done):
                lo, hi = int(b) * block, min(n, (int(b) + 1) * block)
                if lo >= hi:
                    continue
                if out and out[-1][1] == lo:
                    out[-1] = (out[-1][0], hi)
                else:
                    out.append((lo, hi))
            return out
        return None

    def lost_rows(self, key: str) -> list[tuple[int, int]]:
        """Row ranges that were written (by the array's coverage) but whose chunks are gone."""
        covered = self.covered_rows(key)
        if not covered:
            return []
        out: list[tuple[int, int]] = []
        for span in covered:
            out.extend(self.missing_rows(key, span))
        return out

    def require_rows(self, key: str, rows: tuple[int, int] | None = None) -> None:
        """StoreError when chunks holding rows ``[start, stop)`` of ``key`` (default: the rows
        its coverage says were written) are missing: lost data must not read as zeros.
        Arrays without a ``coverage`` stamp (older stores, sparse arrays) are not checked:
        their empty chunks may never have been written."""
        if "coverage" not in (self._array_meta(key).get("attributes") or {}):
            return
        lost = self.missing_rows(key, rows) if rows is not None else self.lost_rows(key)
        if lost:
            raise StoreError(
                f"the store {self.path} is damaged: {key} has lost rows {format_rows(lost)} (chunk files missing); "
                f"see `hpa info --check --store {self.path}`"
            )

    def delete(self, key: str) -> None:
        self.require_writable()
        import shutil

        with self.lock():
            target = self.path / key
            if target.exists():
                shutil.rmtree(target)

    # ---------------------------------------------------------------- attributes
    def attrs(self, key: str = "") -> dict:
        target = self.path / key / "zarr.json" if key else self.path / "zarr.json"
        if not target.exists():
            return {}
        return dict(json.loads(target.read_text()).get("attributes") or {})

    def update_attrs(self, key: str, values: dict) -> None:
        """Read-modify-write of a group's or array's attributes under the store lock."""
        self.require_writable()
        with self.lock():
            node = zarr.open(str(self.path / key) if key else str(self.path), mode="r+", zarr_format=3)
            node.attrs.update(values)

    # ---------------------------------------------------------------- size
    def disk_usage(self) -> tuple[int, int]:
        """(bytes, files) of the store on disk."""
        return disk_usage(self.path)

    # ---------------------------------------------------------------- convenience
    @property
    def images(self):
        from .images import ImageTable

        return ImageTable(self)

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}, mode={self.mode!r})"


def _check_shards(chunks: tuple[int, ...], shards) -> tuple[int, ...] | None:
    """``shards`` as a tuple that the chunks divide, or None when it adds nothing (one chunk per shard)."""
    if shards is None:
        return None
    shards = tuple(max(1, int(v)) for v in shards)
    if len(shards) != len(chunks) or any(s % c for s, c in zip(shards, chunks)):
        raise ValueError(f"shards {shards} must be a multiple of the chunks {chunks}")
    return None if shards == tuple(chunks) else shards


def rows_per_file(store, kind: str, block: int) -> int:
    """Blocks of ``block`` rows per file for a new array of ``kind`` rows (images | cells)."""
    per = store.layout["images_per_file" if kind == "images" else "cells_per_file"]
    return max(1, int(per) // max(1, int(block)))


def remove_partial_files(store, key: str) -> int:
    """Delete the ``*.partial`` files a killed write left under ``key`` (zarr writes every
    chunk or shard file aside and renames it into place, so a kill mid-write leaves the
    old file whole and this aside). Only call when no process writes ``key``. Returns how many."""
    n = 0
    base = store.path / key
    if not base.is_dir():
        return 0
    for dirpath, _, names in os.walk(base):
        for name in names:
            if name.endswith(PARTIAL_SUFFIX):
                try:
                    os.unlink(os.path.join(dirpath, name))
                    n += 1
                except OSError:
                    pass
    return n


def format_rows(spans: list[tuple[int, int]], limit: int = 4) -> str:
    """``[(0, 4), (8, 9)]`` -> ``"0-3, 8"`` (at most ``limit`` ranges, then a count)."""
    parts = [f"{a}" if b - a == 1 else f"{a}-{b - 1}" for a, b in spans[:limit]]
    if len(spans) > limit:
        parts.append(f"and {len(spans) - limit} more range(s)")
    return ", ".join(parts)


def open_store(path: str | os.PathLike = DEFAULT_STORE, mode: str = "r") -> Store:
    """Open a store. ``mode``: ``"r"`` read-only; ``"r+"`` read/write, the store must exist
    (every stage after ingest); ``"a"`` read/write, created when missing (ingest)."""
    if mode not in ("r", "r+", "a"):
        raise ValueError("mode must be 'r', 'r+' or 'a'")
    return Store(path, mode)
