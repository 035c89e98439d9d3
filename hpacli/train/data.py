"""Datasets for the trainers and the image-level row selection.

The trainer's sampler hands a dataset items ``(index, aug_seed)``: ``aug_seed`` is an int
for training (every random choice of the item comes from ``np.random.default_rng(aug_seed)``,
so an epoch is the same whatever the worker count or a resume point) and ``None`` for
evaluation (no augmentation). ``__getitem__`` returns ``(pixels, target)``: uint8 (or
float 0..1) ``[C, S, S]`` and float32 ``[n_classes]``.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import Dataset

from ..classes import NEGATIVE
from ..data.views import random_dihedral
from ..errors import HpaError, StoreError


def _split_item(item) -> tuple[int, int | None]:
    if isinstance(item, (tuple, list)):
        return int(item[0]), (None if item[1] is None else int(item[1]))
    return int(item), None


class ArrayDataset(Dataset):
    """In-memory images (uint8 or float ``[N, C, S, S]``) and targets; dihedral augmentation."""

    def __init__(self, images, targets, augment: bool = True) -> None:
        self.images = images
        self.targets = np.asarray(targets, dtype=np.float32)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, item):
        i, seed = _split_item(item)
        x = np.asarray(self.images[i])
        if self.augment and seed is not None:
            x = random_dihedral(x, np.random.default_rng(seed))
        return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(self.targets[i])


class StoreImageDataset(Dataset):
    """Whole images of the store, from the pixel cache when it is large enough, else PNGs.

    ``rows`` are image-table rows; ``targets`` ``[len(rows), n_classes]``. Pixels come back
    as uint8 ``[4, img_size, img_size]`` (bilinear resize when the source size differs).
    The store is opened lazily in each worker process.
    """

    def __init__(
        self, store_path, rows, targets, img_size: int, augment: bool = True, source: str = "auto"
    ) -> None:
        from ..store import open_store

        self.store_path = str(store_path)
        self.rows = np.asarray(rows, dtype=np.int64)
        self.targets = np.asarray(targets, dtype=np.float32)
        if len(self.rows) != len(self.targets):
            raise ValueError("rows and targets differ in length")
        self.img_size = int(img_size)
        self.augment = augment
        source_was_cache = source == "cache"
        st = open_store(self.store_path, "r")
        cache = st.images.cache_size
        if source not in ("auto", "cache", "png"):
            raise HpaError(f"image source must be auto, cache or png, not {source!r}")
        if source == "auto":
            source = "cache" if cache is not None and cache >= self.img_size else "png"
        if source == "cache" and cache is None:
            raise HpaError(f"the store {self.store_path} has no pixel cache; ingest with --cache-size or read PNGs")
        # rows whose cached pixels were written (marker set); the others are read from their PNGs
        # (source auto) or refused (source cache): never a row of zeros
        self.cached = st.images.cache_present()[self.rows] if source == "cache" else np.zeros(len(self.rows), bool)
        if source_was_cache and not self.cached.all():
            raise HpaError(f"{int((~self.cached).sum())} of the {len(self.rows)} images have no pixels in the "
                           f"store's cache; run `hpa ingest` on the dataset again to fill it, or read the PNGs")
        if source == "cache" and not self.cached.all():
            source = "cache+png" if self.cached.any() else "png"
        self.source = source
        self._store = None
        self._pid = None

    def __len__(self) -> int:
        return len(self.rows)

    def _table(self):
        if self._store is None or self._pid != os.getpid():
            from ..store import open_store

            self._store = open_store(self.store_path, "r")
            self._pid = os.getpid()
        return self._store.images

    def read(self, i: int) -> np.ndarray:
        table = self._table()
        row = int(self.rows[i])
        px = table.read_cache(row) if self.cached[i] else table.read_image(row)
        if px.shape[1] != self.img_size or px.shape[2] != self.img_size:
            from ..io.png import resize_rgby

            px = resize_rgby(px, self.img_size)
        return px

    def __getitem__(self, item):
        i, seed = _split_item(item)
        px = self.read(i)
        if self.augment and seed is not None:
            px = random_dihedral(px, np.random.default_rng(seed))
        return torch.from_numpy(np.ascontiguousarray(px)), torch.from_numpy(self.targets[i])


def read_negative_flags(store) -> np.ndarray:
    """bool ``[N]`` from the negatives stage: Negative images with an obviously stained cell."""
    try:
        from ..store import negatives as neg
    except ImportError:
        neg = None
    reader = getattr(neg, "read_image_negative_flags", None) or getattr(neg, "read_image_flags", None)
    if reader is None:
        raise HpaError(
            "--negatives obvious needs the negatives stage (hpacli.store.negatives), which this hpacli "
            "lacks; pass --negatives all"
        )
    return np.asarray(reader(store), dtype=bool)


def select_image_rows(store, fold: int, negatives: str = "obvious", folds_name: str = "default"):
    """Training and validation rows of the image table for ``fold``, and the label matrix.

    Train: labelled images with a fold ≥ 0 other than ``fold``; validation: labelled images
    of ``fold``. ``negatives='obvious'`` keeps a Negative-labelled training image only when the
    negatives stage flagged it as obvious staining; ``'all'`` keeps every one.
    """
    from ..store.folds import read_image_folds

    if negatives not in ("obvious", "all"):
        raise HpaError(f"--negatives must be obvious or all, not {negatives!r}")
    table = store.images
    n = table.n
    if n == 0:
        raise HpaError(f"the store {store.path} has no images; run `hpa ingest` first")
    folds = read_image_folds(store, folds_name)
    labels = table.labels().astype(np.float32)
    labelled = table.df()["labelled"].to_numpy().astype(bool)
    k = int(folds.max()) + 1 if (folds >= 0).any() else 0
    if not 0 <= fold < max(k, 1) or k == 0:
        raise HpaError(f"--fold {fold} is out of range: the store's folds are 0..{k - 1}")
    train = labelled & (folds >= 0) & (folds != fold)
    val = labelled & (folds == fold)
    dropped = 0
    if negatives == "obvious":
        try:
            flags = read_negative_flags(store)
        except StoreError as exc:
            raise StoreError(f"{exc} (or train with --negatives all)") from None
        if len(flags) < n:
            flags = np.concatenate([flags, np.zeros(n - len(flags), dtype=bool)])
        drop = train & (labels[:, NEGATIVE] > 0) & ~flags[:n]
        dropped = int(drop.sum())
        train &= ~drop
    return np.flatnonzero(train), np.flatnonzero(val), labels, dropped
