"""The cell model's inputs: masked cell crops as a map-style dataset, and the windowed
epoch order (see :mod:`hpacli.train.cell`)."""

from __future__ import annotations

import os
from collections import OrderedDict

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import HpaError

FITS = ("resize", "pad")


class CellCropDataset(Dataset):
    """Cell-model inputs of cells-table ``rows`` (map-style, items ``(index, aug_seed)``).

    Each item: uint8 ``[4, S, S]`` = :class:`hpacli.data.crops.CellInput` of the cell's
    masked crop, cut from its image at ``work_size`` (None: original resolution; pixels from
    the cache when it is large enough, else the PNGs), and its float32 target. A
    per-process LRU of decoded images bounds memory: it keeps at least ``cache_images``
    images, and more while they fit in ``cache_mb`` MiB (small images, such as the
    demo's, then load once per epoch even in a fully shuffled order: reading one image's
    pixels and labels from the store costs about 100 ms, 10 cells' worth of training);
    rows grouped by image (validation, or ``image_window`` ordering) load each image once.
    """

    def __init__(
        self, store_path, rows, targets, img_size: int, *, work_size: int | None = None, fit: str = "resize",
        augment: bool = True, cache_images: int = 4, cache_mb: float = 256.0,
    ) -> None:
        from ..data.crops import CellInput
        from ..store import open_store
        from ..store.cells import CellTable

        if fit not in FITS:
            raise HpaError(f"--fit must be one of {', '.join(FITS)}, not {fit!r}")
        self.store_path = str(store_path)
        self.rows = np.asarray(rows, dtype=np.int64)
        self.targets = np.asarray(targets, dtype=np.float32)
        if len(self.rows) != len(self.targets):
            raise ValueError("rows and targets differ in length")
        self.img_size = int(img_size)
        self.work_size = None if work_size is None else int(work_size)
        self.augment = augment
        self.transform = CellInput(fit=fit, augment=augment)
        self._plain_transform = CellInput(fit=fit, augment=False)
        self.cache_images = max(1, int(cache_images))
        self.cache_bytes = max(0.0, float(cache_mb)) * 2**20
        st = open_store(self.store_path, "r")
        cells = CellTable(st)
        df = st.images.df()
        self.image = cells.column("image")[self.rows].astype(np.int64)
        self.cell_id = cells.column("cell_id")[self.rows].astype(np.int64)
        self.bbox = cells.column("bbox")[self.rows].astype(np.int64)
        self.height = df["height"].to_numpy().astype(np.int64)
        self.width = df["width"].to_numpy().astype(np.int64)
        self.cache_size = st.images.cache_size
        self._store = None
        self._pid = None
        self._bytes = 0
        self._images: OrderedDict = OrderedDict()
        self.loads = 0  # images decoded by this process (benchmarks)

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_store"], state["_pid"], state["_images"], state["_bytes"] = None, None, OrderedDict(), 0
        return state

    def _open(self):
        if self._store is None or self._pid != os.getpid():
            from ..store import open_store

            self._store = open_store(self.store_path, "r")
            self._pid = os.getpid()
            self._images = OrderedDict()
            self._bytes = 0
        return self._store

    def image_arrays(self, img: int) -> tuple[np.ndarray, np.ndarray]:
        """(pixels ``[4, h, w]``, labels ``[h, w]``) of image ``img`` at working resolution."""
        from ..data.crops import load_image

        store = self._open()
        hit = self._images.get(img)
        if hit is not None:
            self._images.move_to_end(img)
            return hit
        pair = load_image(store, img, self.work_size, int(self.height[img]), int(self.width[img]), self.cache_size)
        self.loads += 1
        self._images[img] = pair
        self._bytes += sum(a.nbytes for a in pair)
        while len(self._images) > self.cache_images and self._bytes > self.cache_bytes:
            _, old = self._images.popitem(last=False)
            self._bytes -= sum(a.nbytes for a in old)
        return pair

    def crop(self, i: int, rng: np.random.Generator | None = None) -> np.ndarray:
        from ..data.crops import masked_crop, scale_bbox

        img = int(self.image[i])
        pixels, labels = self.image_arrays(img)
        box = scale_bbox(self.bbox[i], (int(self.height[img]), int(self.width[img])), labels.shape)
        crop = masked_crop(pixels, labels, int(self.cell_id[i]), box)
        if rng is None:  # evaluation: no flip
            return self._plain_transform(crop, self.img_size, None)
        return self.transform(crop, self.img_size, rng)

    def __getitem__(self, item):
        if isinstance(item, (tuple, list)):
            i, seed = int(item[0]), item[1]
        else:
            i, seed = int(item), None
        rng = np.random.default_rng(int(seed)) if (self.augment and seed is not None) else None
        x = self.crop(i, rng)
        return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(self.targets[i])


def windowed_order(cell_images: np.ndarray, window: int, rng: np.random.Generator) -> np.ndarray:
    """A permutation of the cell indices: images in random order, cells shuffled within
    windows of ``window`` consecutive images."""
    cell_images = np.asarray(cell_images)
    uniq, inverse = np.unique(cell_images, return_inverse=True)
    img_perm = rng.permutation(len(uniq))
    rank = np.empty(len(uniq), dtype=np.int64)
    rank[img_perm] = np.arange(len(uniq))
    win = rank[inverse] // max(1, int(window))
    noise = rng.random(len(cell_images))
    return np.lexsort((noise, win)).astype(np.int64)


