"""Open, create and check an hpacli store: one Zarr v3 directory that holds every stage's state.

This package is the only code that knows the layout. Everything stored carries an
``encoding`` and ``encoding_version`` attribute; the root carries the schema version.
"""

from __future__ import annotations

import fcntl
import json
import os
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


def child_key(group: str, name: str, what: str = "run") -> str:
    """``group/name`` for a user-chosen name (a run, a predictions set), checked so that it
    stays one path component of the store."""
    if not name or "/" in name or name.startswith((".", "_")):
        raise StoreError(f"bad {what} name {name!r}: use letters, digits, - and _ (no '/', not starting with '.' or '_')")
    return f"{group}/{name}"


class Store:
    """A handle on one store directory. Use :func:`open_store`."""

    def __init__(self, path: str | os.PathLike, mode: str = "r") -> None:
        self.path = Path(path)
        self.mode = mode
        self.root = self._open_root()

    # ---------------------------------------------------------------- open / schema
    def _open_root(self) -> zarr.Group:
        path = self.path
        exists = (path / "zarr.json").exists()
        if not exists:
            if self.mode == "r":
                if path.exists():
                    raise StoreError(f"{path} is not an hpacli store (no zarr.json); create one with `hpa ingest`")
                raise StoreError(f"no store at {path}; create one with `hpa ingest DATA --store {path}`")
            if path.exists() and any(path.iterdir()):
                raise StoreError(f"{path} exists and is not empty, and is not an hpacli store")
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
                {"hpacli": {"schema": SCHEMA_NAME, "schema_version": SCHEMA_VERSION, "created_with": __version__}}
            )
            try:
                os.rename(tmp, path)  # atomic; replaces an empty folder, fails on a filled one
            except OSError:
                if not (path / "zarr.json").exists():  # not another process's store either
                    raise StoreError(f"cannot create the store at {path}: it exists and is not an hpacli store") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    @property
    def schema_version(self) -> int:
        return int(self.root.attrs["hpacli"]["schema_version"])

    def require_writable(self) -> None:
        if self.mode == "r":
            raise StoreError(f"store {self.path} was opened read-only")

    # ---------------------------------------------------------------- locking
    @contextmanager
    def lock(self, name: str = LOCK_FILE) -> Iterator[None]:
        """An exclusive lock between processes, for metadata changes only (create, resize,
        attributes). Data chunks of disjoint shards are written without it. Stages that
        must serialise a longer step (while the store lock is taken inside it) pass a
        ``name`` of their own."""
        fd = os.open(self.path / name, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    # ---------------------------------------------------------------- arrays and groups
    def has(self, key: str) -> bool:
        return (self.path / key / "zarr.json").exists()

    def array(self, key: str, hint: str | None = None) -> zarr.Array:
        if not self.has(key):
            msg = f"the store {self.path} has no {key!r}"
            raise StoreError(f"{msg}; {hint}" if hint else msg)
        node = zarr.open_array(str(self.path / key), mode="r" if self.mode == "r" else "r+", zarr_format=3)
        return node

    def group(self, key: str, create: bool = False) -> zarr.Group:
        if not self.has(key):
            if not create:
                raise StoreError(f"the store {self.path} has no group {key!r}")
            self.require_writable()
            with self.lock():
                if not self.has(key):
                    zarr.open_group(str(self.path / key), mode="a", zarr_format=3)
        return zarr.open_group(str(self.path / key), mode="r" if self.mode == "r" else "r+", zarr_format=3)

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
    ) -> zarr.Array:
        """Create (or with ``overwrite`` replace) an array stamped with its encoding."""
        self.require_writable()
        with self.lock():
            return self._create_array_locked(
                key, shape, dtype, chunks, encoding, encoding_version, fill_value, compression, attrs, overwrite
            )

    def _create_array_locked(
        self, key, shape, dtype, chunks, encoding, encoding_version, fill_value, compression, attrs, overwrite
    ) -> zarr.Array:
        parent, _, name = key.rpartition("/")
        group = zarr.open_group(str(self.path / parent) if parent else str(self.path), mode="a", zarr_format=3)
        is_str = dtype is str or dtype == "str"
        kwargs: dict[str, Any] = {}
        if not is_str:
            kwargs["compressors"] = codec(compression)
        shape = tuple(int(s) for s in shape)
        chunks = tuple(max(1, int(c)) for c in chunks)
        arr = group.create_array(
            name,
            shape=shape,
            dtype=str if is_str else np.dtype(dtype),
            chunks=chunks,
            fill_value="" if is_str else fill_value,
            overwrite=overwrite,
            attributes={"encoding": encoding, "encoding_version": encoding_version, **(attrs or {})},
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
    ) -> zarr.Array:
        """Open ``key`` if it exists (growing axis 0 to ``shape[0]``), else create it.

        Safe when several shard processes call it at once (it runs under the store lock).
        An existing array with another dtype, chunking or trailing shape is an error.
        """
        self.require_writable()
        with self.lock():
            if not self.has(key):
                return self._create_array_locked(
                    key, shape, dtype, chunks, encoding, encoding_version, fill_value, compression, attrs, False
                )
            arr = zarr.open_array(str(self.path / key), mode="r+", zarr_format=3)
            want_str = dtype is str or dtype == "str"
            same_dtype = (arr.dtype.kind in "UTO") if want_str else arr.dtype == np.dtype(dtype)
            if not same_dtype or tuple(arr.chunks) != tuple(chunks) or tuple(arr.shape[1:]) != tuple(shape[1:]):
                raise StoreError(
                    f"{key} exists with dtype {arr.dtype}, shape {arr.shape}, chunks {arr.chunks}; "
                    f"expected {dtype}, {shape}, {chunks}. Was it written by another version or with other options?"
                )
            if arr.shape[0] < shape[0]:
                arr.resize((shape[0], *arr.shape[1:]))
            return arr

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
        total = 0
        files = 0
        for dirpath, _, filenames in os.walk(self.path):
            for f in filenames:
                try:
                    total += os.path.getsize(os.path.join(dirpath, f))
                    files += 1
                except OSError:
                    pass
        return total, files

    # ---------------------------------------------------------------- convenience
    @property
    def images(self):
        from .images import ImageTable

        return ImageTable(self)

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}, mode={self.mode!r})"


def open_store(path: str | os.PathLike = DEFAULT_STORE, mode: str = "r") -> Store:
    """Open a store. ``mode``: ``"r"`` read-only, ``"a"`` read/write (created if missing)."""
    if mode not in ("r", "a"):
        raise ValueError("mode must be 'r' or 'a'")
    return Store(path, mode)
