"""Cell crops: the one place that cuts a cell out of its image, for every cell-level stage.

Geometry (facts file, "Cells"): a cell's crop is the tight bounding box of its mask;
pixels of *other* cells inside the box ("alien" pixels) are zeroed in all four channels,
background pixels are kept. Crops are cut at a *working resolution*: the image resized
to ``work_size x work_size`` (the image model's input scale, e.g. 1024), or the original
resolution when ``work_size`` is None.

Model inputs built from a crop (all uint8 ``[4, h, w]`` → ``[4, S, S]``):

* :func:`tile_fill` — pseudo-labelling: the crop at image-model scale, repeated to fill
  the model's S x S input.
* :func:`cell_model_input` — the cell-level model: tiled 2x along the short side when it
  is under half the long side, zero-padded to a centred square, resized to S (or, with
  ``fit="pad"``, kept at its scale and padded to S).

Flips and test-time views live in :mod:`hpacli.data.views`.

:class:`CellBatches` is a torch ``IterableDataset`` that gathers cells across images:
the caller hands it *units* (arrays of cell rows); each unit goes to one DataLoader
worker, which loads each of the unit's images once (pixel cache when large enough, else
PNGs; label image resized with nearest neighbour) and yields ready batches. Batches never
span units, and the last batch of a unit says so (``end``), so a stage can write a block
of results as soon as it is complete. Memory per worker: one image at working resolution
plus one batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .views import dihedral

# ---------------------------------------------------------------------------- geometry


def scale_bbox(bbox: Sequence[int], src_shape: tuple[int, int], dst_shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """Map an end-exclusive ``(r0, c0, r1, c1)`` box from ``src_shape`` to ``dst_shape``
    pixel coordinates, rounding outwards; the result is at least one pixel and inside."""
    r0, c0, r1, c1 = (int(v) for v in bbox)
    sy = dst_shape[0] / src_shape[0]
    sx = dst_shape[1] / src_shape[1]
    if sy == 1.0 and sx == 1.0:
        return r0, c0, r1, c1
    R0 = min(max(int(math.floor(r0 * sy + 1e-9)), 0), dst_shape[0] - 1)
    C0 = min(max(int(math.floor(c0 * sx + 1e-9)), 0), dst_shape[1] - 1)
    R1 = min(max(int(math.ceil(r1 * sy - 1e-9)), R0 + 1), dst_shape[0])
    C1 = min(max(int(math.ceil(c1 * sx - 1e-9)), C0 + 1), dst_shape[1])
    return R0, C0, R1, C1


def masked_crop(pixels: np.ndarray, labels: np.ndarray, cell_id: int, bbox: Sequence[int]) -> np.ndarray:
    """The cell's bbox crop of ``pixels`` ``[C, H, W]`` with other cells' pixels zeroed in
    every channel (background, label 0, is kept). ``labels`` ``[H, W]`` and ``bbox``
    ``(r0, c0, r1, c1)`` (end exclusive) are in the same pixel grid as ``pixels``."""
    r0, c0, r1, c1 = (int(v) for v in bbox)
    crop = np.array(pixels[:, r0:r1, c0:c1], copy=True)
    lab = labels[r0:r1, c0:c1]
    alien = (lab != 0) & (lab != cell_id)
    if alien.any():
        crop[:, alien] = 0
    return crop


def _resize(arr: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of uint8 ``[C, h, w]`` to ``[C, *shape]`` (area-like when shrinking)."""
    from PIL import Image

    h, w = int(shape[0]), int(shape[1])
    if arr.shape[1] == h and arr.shape[2] == w:
        return arr
    out = np.empty((arr.shape[0], h, w), dtype=np.uint8)
    for c in range(arr.shape[0]):
        im = Image.fromarray(np.ascontiguousarray(arr[c]))
        out[c] = np.asarray(im.resize((w, h), Image.BILINEAR, reducing_gap=2.0))
    return out


def resize_nearest(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label image (ids are never blended), with the
    segmentation's rule: output row ``r`` shows input row ``floor(r * h / H)``, so the
    cells table's bboxes (exact for that rule at original size) stay exact here."""
    h, w = labels.shape
    H, W = int(shape[0]), int(shape[1])
    if (h, w) == (H, W):
        return labels
    rows = (np.arange(H, dtype=np.int64) * h) // H
    cols = (np.arange(W, dtype=np.int64) * w) // W
    return labels[rows[:, None], cols[None, :]]


def _fit_inside(crop: np.ndarray, size: int) -> np.ndarray:
    """Shrink (keeping the aspect ratio) so that neither side exceeds ``size``."""
    h, w = crop.shape[1:]
    if h <= size and w <= size:
        return crop
    f = size / max(h, w)
    return _resize(crop, (max(1, min(size, round(h * f))), max(1, min(size, round(w * f)))))


def tile_fill(crop: np.ndarray, size: int) -> np.ndarray:
    """Repeat the crop from the top-left corner until it fills ``size x size``
    (pseudo-labelling input). A crop larger than ``size`` is first shrunk to fit."""
    crop = _fit_inside(crop, size)
    h, w = crop.shape[1:]
    reps = (1, -(-size // h), -(-size // w))
    return np.tile(crop, reps)[:, :size, :size].copy()


def tile_short_side(crop: np.ndarray) -> np.ndarray:
    """Tile twice along the short side when it is under half the long side."""
    h, w = crop.shape[1:]
    if h < w / 2:
        return np.concatenate([crop, crop], axis=1)
    if w < h / 2:
        return np.concatenate([crop, crop], axis=2)
    return crop


def pad_square(crop: np.ndarray, side: int | None = None) -> np.ndarray:
    """Zero-pad to a centred square of ``side`` (default: the long side)."""
    h, w = crop.shape[1:]
    side = max(h, w) if side is None else int(side)
    out = np.zeros((crop.shape[0], side, side), dtype=crop.dtype)
    top = (side - h) // 2
    left = (side - w) // 2
    out[:, top : top + h, left : left + w] = crop
    return out


def cell_model_input(crop: np.ndarray, size: int, fit: str = "resize") -> np.ndarray:
    """The cell-level model's input: :func:`tile_short_side`, :func:`pad_square`, then
    resize to ``size`` (``fit="resize"``), or keep the crop's scale and pad to ``size``
    (``fit="pad"``, for crops cut at image-model scale; shrunk only if larger)."""
    sq = pad_square(tile_short_side(crop))
    if fit == "resize":
        return _resize(sq, (size, size))
    if fit == "pad":
        return pad_square(_fit_inside(sq, size), size)
    raise ValueError(f"fit must be 'resize' or 'pad', not {fit!r}")


# ---------------------------------------------------------------------------- transforms


class TileFill:
    """Picklable transform: the pseudo-labelling input (:func:`tile_fill`)."""

    def __call__(self, crop: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
        return tile_fill(crop, size)


@dataclass
class CellInput:
    """Picklable transform: :func:`cell_model_input`, with a random dihedral flip when
    ``augment`` (the 8 flips of training)."""

    fit: str = "resize"
    augment: bool = False

    def __call__(self, crop: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
        out = cell_model_input(crop, size, fit=self.fit)
        if self.augment:
            out = np.ascontiguousarray(dihedral(out, int(rng.integers(8))))
        return out


# ---------------------------------------------------------------------------- image loading


def read_cell_labels(store, index: int) -> np.ndarray:
    """The cells label image of one image at mask resolution (0 = background)."""
    from ..errors import StoreError

    try:
        from ..store.segmentation import read_labels
    except ImportError:  # pragma: no cover - until segmentation lands
        raise StoreError("this hpacli has no segmentation reader; run `hpa segment` with a current hpacli") from None
    return np.asarray(read_labels(store, index)[1])


def work_shape(height: int, width: int, work_size: int | None) -> tuple[int, int]:
    """The working resolution of an image: ``work_size`` square, or the original size."""
    if work_size is None:
        return int(height), int(width)
    return int(work_size), int(work_size)


def load_pixels(store, index: int, shape: tuple[int, int], cache_size: int | None = None) -> np.ndarray:
    """uint8 RGBY ``[4, *shape]``: from the pixel cache when it has at least that many
    pixels and the image's row is present, else decoded from the PNGs; resized to ``shape``."""
    if cache_size is None:
        cache_size = store.images.cache_size
    pix = None
    if cache_size is not None and cache_size >= max(shape):
        pix = store.images.try_read_cache(index)
    if pix is None:
        pix = store.images.read_image(index)
    return _resize(pix, shape)


def load_image(store, index: int, work_size: int | None, height: int, width: int, cache_size=None):
    """(pixels ``[4, h, w]``, cell labels ``[h, w]``) at working resolution."""
    shape = work_shape(height, width, work_size)
    pixels = load_pixels(store, index, shape, cache_size)
    labels = read_cell_labels(store, index)
    if labels.size == 0:
        from ..errors import InputError

        raise InputError("no label image (the image was unreadable when segmented)")
    return pixels, resize_nearest(labels, shape)


# ---------------------------------------------------------------------------- dataset


@dataclass
class CropUnit:
    """Cells that one worker crops together. ``rows`` index the cells table; images are
    loaded once per unit at ``work_size`` (None: original resolution); ``out_size`` is
    the side of the transformed crops and ``transform`` the transform (default: the
    dataset's)."""

    rows: np.ndarray
    work_size: int | None = None
    out_size: int | None = None
    tag: Any = None
    transform: Callable | None = None


def _torch_dataset_base():
    from torch.utils.data import IterableDataset

    return IterableDataset


class CellBatches(_torch_dataset_base()):
    """Batches of transformed cell crops, gathered across images.

    Yields dicts: ``rows`` int64 tensor [b] (cells-table rows), ``x`` uint8 tensor
    [b, 4, S, S], ``unit`` (index into ``units``), ``end`` (True on the unit's last
    batch; a unit with no rows yields one empty batch so its end is still reported),
    ``skipped`` int64 tensor (rows of unreadable images, reported once) and
    ``problems`` (one text per unreadable image).
    Use with ``DataLoader(ds, batch_size=None, num_workers=k)``; each worker opens the
    store itself and takes units ``k, k + n, ...``. Without workers it runs in-process.

    ``transform(crop, size, rng) -> uint8 [4, size, size]`` (picklable; see
    :class:`TileFill`, :class:`CellInput`). ``shuffle_buffer`` > 0 mixes crops of
    several images inside a unit (training); ``seed`` + :meth:`set_epoch` make it
    reproducible.
    """

    def __init__(
        self,
        store_path,
        units: Sequence[CropUnit],
        transform: Callable,
        batch_size: int,
        out_size: int | None = None,
        shuffle_buffer: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.store_path = str(store_path)
        self.units = list(units)
        self.transform = transform
        self.batch_size = int(batch_size)
        self.out_size = out_size
        self.shuffle_buffer = int(shuffle_buffer)
        self.seed = int(seed)
        self.epoch = 0
        self._store = None
        self._meta = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:  # batches, for progress displays (upper bound with workers)
        return sum(max(1, -(-len(u.rows) // self.batch_size)) for u in self.units)

    # -- per-process state
    def _open(self):
        if self._store is None:
            from ..store import open_store
            from ..store.cells import CellTable

            store = open_store(self.store_path, "r")
            cells = CellTable(store)
            df = store.images.df()
            self._meta = {
                "image": cells.column("image"),
                "cell_id": cells.column("cell_id"),
                "bbox": cells.column("bbox"),
                "height": df["height"].to_numpy(),
                "width": df["width"].to_numpy(),
                "cache_size": store.images.cache_size,
                "ids": store.images.ids(),
            }
            self._store = store
        return self._store, self._meta

    def iter_unit(self, k: int, rng: np.random.Generator):
        """(rows, crops, problem) per image of unit ``k`` (each image loaded once). An
        image that cannot be read (or has no label image) gives no crops and a problem
        text instead, so one bad image never stops a long stage."""
        from ..errors import HpaError

        store, m = self._open()
        unit = self.units[k]
        rows = np.asarray(unit.rows, dtype=np.int64)
        size = unit.out_size or self.out_size
        transform = unit.transform or self.transform
        if size is None:
            raise ValueError("CellBatches needs out_size (per unit or for the dataset)")
        images = m["image"][rows]
        _, first = np.unique(images, return_index=True)
        for img in images[np.sort(first)]:
            sel = rows[images == img]
            h, w = int(m["height"][img]), int(m["width"][img])
            try:
                pixels, labels = load_image(store, int(img), unit.work_size, h, w, m["cache_size"])
            except (HpaError, OSError) as exc:
                yield sel, [], f"image {m['ids'][img]}: {exc}"
                continue
            crops = []
            for r in sel:
                box = scale_bbox(m["bbox"][r], (h, w), labels.shape)
                crop = masked_crop(pixels, labels, int(m["cell_id"][r]), box)
                crops.append(transform(crop, size, rng))
            yield sel, crops, None

    def _batches_of_unit(self, k: int, rng: np.random.Generator):
        import torch

        buf_rows: list[int] = []
        buf_x: list[np.ndarray] = []
        skipped_rows: list[int] = []
        problems: list[str] = []

        def emit(n: int, end: bool):
            if self.shuffle_buffer > 0 and buf_rows:
                take = rng.permutation(len(buf_rows))[:n]
            else:
                take = np.arange(min(n, len(buf_rows)))
            rows = [buf_rows[i] for i in take]
            xs = [buf_x[i] for i in take]
            for i in sorted(take.tolist(), reverse=True):
                del buf_rows[i]
                del buf_x[i]
            x = torch.from_numpy(np.stack(xs)) if xs else torch.zeros((0, 4, 1, 1), dtype=torch.uint8)
            out = {"rows": torch.as_tensor(np.asarray(rows, dtype=np.int64)), "x": x, "unit": k, "end": end,
                   "skipped": torch.as_tensor(np.asarray(skipped_rows, dtype=np.int64)), "problems": list(problems)}
            skipped_rows.clear()
            problems.clear()
            return out

        # keep more than one batch (or the shuffle buffer plus a batch) so that the
        # unit's last batch is never empty unless the unit is
        keep = self.batch_size + (self.shuffle_buffer if self.shuffle_buffer > 0 else 0)
        for sel, crops, problem in self.iter_unit(k, rng):
            if problem is not None:
                skipped_rows.extend(int(r) for r in sel)
                problems.append(problem)
                continue
            buf_rows.extend(int(r) for r in sel)
            buf_x.extend(crops)
            while len(buf_rows) > keep:
                yield emit(self.batch_size, False)
        # drain: full batches, then the last (possibly short) one marked as the end
        while len(buf_rows) > self.batch_size:
            yield emit(self.batch_size, False)
        yield emit(self.batch_size, True)

    def __iter__(self):
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        if info is not None:
            import torch

            torch.set_num_threads(1)
        rng = np.random.default_rng([self.seed, self.epoch, wid])
        for k in range(wid, len(self.units), nw):
            yield from self._batches_of_unit(k, rng)


def make_loader(dataset: CellBatches, workers: int = 0, prefetch: int = 2, pin_memory: bool = False):
    """A DataLoader over :class:`CellBatches` (batches are made by the dataset)."""
    from torch.utils.data import DataLoader

    kwargs: dict[str, Any] = {"batch_size": None, "num_workers": int(workers), "pin_memory": pin_memory}
    if workers > 0:
        kwargs["prefetch_factor"] = prefetch
        kwargs["persistent_workers"] = False
    return DataLoader(dataset, **kwargs)
