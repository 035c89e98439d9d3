"""Cell crop geometry on hand-made label images, views, and the cross-image batch dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from hpacli.data import crops as C
from hpacli.data import views as V

# ----------------------------------------------------------------------------- a tiny store with cells
# (shared with test_pseudolabel.py)

def hand_labels(rng: np.random.Generator, size: int, n_cells: int) -> np.ndarray:
    """Rectangles and L-shapes with ids 1..n on a size x size grid, neighbours' boxes overlapping."""
    lab = np.zeros((size, size), dtype=np.int32)
    cell = 1
    step = size // 3
    for gy in range(3):
        for gx in range(3):
            if cell > n_cells:
                break
            r0, c0 = gy * step + int(rng.integers(0, 2)), gx * step + int(rng.integers(0, 2))
            h, w = int(rng.integers(step // 2, step)), int(rng.integers(step // 2, step + 2))
            lab[r0 : r0 + h, c0 : min(c0 + w, size)] = cell
            cell += 1
    return lab


def make_cell_store(tmp: Path, n_images: int = 6, size: int = 64, mask: int = 32, cells_per_image=(3, 6),
                    cache_size: int | None = None, n_folds: int = 3, seed: int = 0):
    """Ingest synthetic PNGs, write hand-made label images (at mask resolution) through the
    segmentation layout, build the cells table from them, and write image folds (round
    robin; the last image is unused = -1)."""
    from hpacli.data.ingest import kaggle_candidates, run_ingest
    from hpacli.store import open_store
    from hpacli.store.folds import write_image_folds
    from tests.datasets import make_kaggle_dataset

    data = make_kaggle_dataset(tmp / "data", n_train=n_images, n_test=0, size=size, seed=seed)
    store = open_store(tmp / "hpa.zarr", "a")
    run_ingest(store, kaggle_candidates(data), data_root=data, cache_size=cache_size, workers=1)
    from hpacli.store import segmentation as SEG

    rng = np.random.default_rng(seed)
    labels = {}
    for i in range(n_images):
        lab = hand_labels(rng, mask, int(rng.integers(*cells_per_image)))
        ids = np.unique(lab[lab > 0])
        lut = np.zeros(lab.max() + 1, dtype=np.int32)
        lut[ids] = np.arange(1, len(ids) + 1)
        labels[f"i{i}"] = lut[lab]  # ids 1..n as the segmentation stores them
    SEG.ensure_layout(store, n_images, (mask, mask))
    SEG.write_block(store, 0, n_images, {i: (labels[f"i{i}"].astype(np.uint16),) * 2 for i in range(n_images)})
    SEG.build_cells_table(store)
    folds = np.array([i % n_folds for i in range(n_images)], dtype=np.int8)
    folds[-1] = -1
    write_image_folds(store, folds)
    return store, labels


@pytest.fixture
def cell_store(tmp_path):
    return make_cell_store(tmp_path)


# ----------------------------------------------------------------------------- geometry


def test_masked_crop_zeroes_other_cells_keeps_background():
    labels = np.array(
        [
            [0, 0, 0, 0, 0, 0],
            [0, 1, 1, 1, 0, 0],
            [0, 1, 2, 2, 0, 0],
            [0, 1, 2, 2, 3, 3],
            [0, 1, 1, 0, 3, 3],
        ]
    )
    pixels = np.arange(1, 4 * 5 * 6 + 1, dtype=np.uint8).reshape(4, 5, 6)
    crop = C.masked_crop(pixels, labels, 1, (1, 1, 5, 4))
    assert crop.shape == (4, 4, 3)
    lab = labels[1:5, 1:4]
    src = pixels[:, 1:5, 1:4]
    assert np.all(crop[:, lab == 2] == 0)  # the alien cell, every channel
    assert np.array_equal(crop[:, lab == 1], src[:, lab == 1])  # the cell
    assert np.array_equal(crop[:, lab == 0], src[:, lab == 0])  # background kept
    assert (lab == 0).any() and (src[:, lab == 0] > 0).all()
    # the source is untouched
    assert pixels[0, 2, 2] != 0


def test_scale_bbox_rounds_outwards_and_stays_inside():
    assert C.scale_bbox((2, 4, 10, 12), (20, 40), (10, 20)) == (1, 2, 5, 6)
    assert C.scale_bbox((3, 3, 5, 5), (10, 10), (4, 4)) == (1, 1, 2, 2)
    assert C.scale_bbox((0, 0, 1, 1), (100, 100), (10, 10)) == (0, 0, 1, 1)  # at least one pixel
    assert C.scale_bbox((99, 99, 100, 100), (100, 100), (10, 10)) == (9, 9, 10, 10)
    assert C.scale_bbox((2, 3, 7, 9), (10, 10), (10, 10)) == (2, 3, 7, 9)


def test_resize_nearest_never_blends_ids():
    lab = np.array([[1, 2], [3, 4]], dtype=np.int32)
    up = C.resize_nearest(lab, (4, 6))
    assert up.shape == (4, 6)
    assert np.array_equal(up[:2, :3], np.ones((2, 3)))
    assert np.array_equal(up[2:, 3:], np.full((2, 3), 4))
    down = C.resize_nearest(np.kron(lab, np.ones((5, 5), dtype=np.int32)), (2, 2))
    assert np.array_equal(down, lab)


def test_tile_fill_repeats_from_top_left():
    crop = np.arange(4 * 3 * 5, dtype=np.uint8).reshape(4, 3, 5)
    out = C.tile_fill(crop, 8)
    assert out.shape == (4, 8, 8)
    ii, jj = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
    assert np.array_equal(out, crop[:, ii % 3, jj % 5])
    big = np.full((4, 20, 10), 7, dtype=np.uint8)
    out = C.tile_fill(big, 8)  # shrunk to 8x4, then tiled twice across
    assert out.shape == (4, 8, 8) and np.all(out == 7)


def test_tiling_rule_short_side_under_half():
    a = np.arange(2 * 3 * 8, dtype=np.uint8).reshape(2, 3, 8)
    t = C.tile_short_side(a)  # 3 < 8 / 2: tiled along rows
    assert t.shape == (2, 6, 8) and np.array_equal(t[:, :3], a) and np.array_equal(t[:, 3:], a)
    b = np.zeros((2, 4, 8), dtype=np.uint8)  # 4 is not under 4: unchanged
    assert C.tile_short_side(b).shape == (2, 4, 8)
    c = np.arange(2 * 9 * 4, dtype=np.uint8).reshape(2, 9, 4)  # 4 < 4.5: tiled along columns
    t = C.tile_short_side(c)
    assert t.shape == (2, 9, 8) and np.array_equal(t[:, :, 4:], c)


def test_pad_square_centres_the_crop():
    a = np.full((1, 3, 6), 9, dtype=np.uint8)
    sq = C.pad_square(a)
    assert sq.shape == (1, 6, 6)
    assert np.all(sq[:, 1:4] == 9) and np.all(sq[:, 0] == 0) and np.all(sq[:, 4:] == 0)
    sq = C.pad_square(np.full((1, 4, 2), 5, dtype=np.uint8), 8)
    assert np.all(sq[:, 2:6, 3:5] == 5) and sq.sum() == 5 * 8


def test_cell_model_input_tile_pad_resize():
    crop = np.full((4, 2, 10), 200, dtype=np.uint8)  # 2 < 5: tiled to 4 x 10, padded to 10 x 10
    padded = C.cell_model_input(crop, 10, fit="pad")
    assert padded.shape == (4, 10, 10)
    assert np.all(padded[:, 3:7] == 200) and np.all(padded[:, :3] == 0) and np.all(padded[:, 7:] == 0)
    resized = C.cell_model_input(crop, 20)
    assert resized.shape == (4, 20, 20)
    assert np.all(resized[:, :4] == 0) and np.all(resized[:, 8:12] == 200) and np.all(resized[:, -4:] == 0)
    small = C.cell_model_input(np.full((4, 3, 4), 1, dtype=np.uint8), 8, fit="pad")  # kept at scale
    assert small.sum() == 4 * 3 * 4
    with pytest.raises(ValueError):
        C.cell_model_input(crop, 8, fit="stretch")


# ----------------------------------------------------------------------------- views


def test_views_are_the_named_transforms():
    a = np.arange(12).reshape(3, 4)
    H, W = a.shape
    assert np.array_equal(V.apply_view(a, "id"), a)
    assert np.array_equal(V.apply_view(a, "vflip"), a[::-1, :])
    assert np.array_equal(V.apply_view(a, "hflip"), a[:, ::-1])
    r = V.apply_view(a, "rot90")
    assert r.shape == (W, H)
    for i in range(W):
        for j in range(H):
            assert r[i, j] == a[j, W - 1 - i]  # counter-clockwise quarter turn
    assert np.array_equal(V.apply_view(a, "transpose"), a.T)
    # torch gives the same on [B, C, H, W]
    t = torch.arange(2 * 12).reshape(1, 2, 3, 4)
    for name in V.VIEWS:
        assert np.array_equal(V.apply_view(t, name).numpy(), V.apply_view(t.numpy(), name)), name


def test_dihedral_is_the_group_of_eight():
    a = np.arange(9).reshape(3, 3)
    outs = {V.dihedral(a, d).tobytes() for d in range(8)}
    assert len(outs) == 8
    for d in range(8):  # every element has an inverse among the eight
        y = V.dihedral(a, d)
        assert any(np.array_equal(V.dihedral(y, e), a) for e in range(8))
    with pytest.raises(Exception, match="unknown view"):
        V.check_views(["id", "spin"])


# ----------------------------------------------------------------------------- dataset


def _collect(ds, workers, image):
    """{row: crop}, the units whose end was seen, and whether a batch mixed images."""
    got = {}
    ends = []
    multi_image = False
    for batch in C.make_loader(ds, workers=workers):
        rows = batch["rows"].numpy()
        multi_image |= len(set(image[rows].tolist())) > 1
        for r, x in zip(rows, batch["x"].numpy()):
            assert r not in got
            got[int(r)] = x
        if batch["end"]:
            ends.append(batch["unit"])
    return got, ends, multi_image


def test_cell_batches_gather_across_images_with_workers(cell_store):
    store, labels = cell_store
    from hpacli.store.cells import CellTable

    cells = CellTable(store)
    n = cells.n
    units = [C.CropUnit(np.arange(0, n // 2), 32, 32), C.CropUnit(np.arange(n // 2, n), 32, 32),
             C.CropUnit(np.zeros(0, dtype=np.int64), 32, 32)]
    ds = C.CellBatches(store.path, units, C.TileFill(), batch_size=5)
    image = cells.column("image")
    got0, ends0, multi = _collect(ds, 0, image)
    got2, ends2, _ = _collect(C.CellBatches(store.path, units, C.TileFill(), batch_size=5), 2, image)
    assert sorted(got0) == list(range(n)) and sorted(ends0) == [0, 1, 2]
    assert multi, "a batch should hold cells of more than one image"
    assert sorted(got2) == sorted(got0) and sorted(ends2) == [0, 1, 2]
    assert all(np.array_equal(got0[r], got2[r]) for r in got0)
    # one crop by hand: image at 32 x 32 (PNG 64 -> 32), labels at 32 already
    r = int(n // 2 + 1)
    img = int(cells.column("image")[r])
    pix = C._resize(store.images.read_image(img), (32, 32))
    box = C.scale_bbox(cells.column("bbox")[r], (64, 64), (32, 32))
    want = C.tile_fill(C.masked_crop(pix, labels[f"i{img}"], int(cells.column("cell_id")[r]), box), 32)
    assert np.array_equal(got0[r], want)


def test_pixels_come_from_cache_when_large_enough(tmp_path, monkeypatch):
    store, _ = make_cell_store(tmp_path, n_images=2, cache_size=32)

    def no_png(i):
        raise AssertionError("PNG read although the cache is large enough")

    monkeypatch.setattr(type(store.images), "read_image", lambda self, i: no_png(i))
    assert C.load_pixels(store, 0, (32, 32)).shape == (4, 32, 32)
    assert C.load_pixels(store, 0, (16, 16)).shape == (4, 16, 16)
    with pytest.raises(AssertionError, match="PNG read"):
        C.load_pixels(store, 0, (64, 64))


def test_shuffle_buffer_mixes_but_keeps_every_cell(cell_store):
    store, _ = cell_store
    from hpacli.store.cells import CellTable

    n = CellTable(store).n
    units = [C.CropUnit(np.arange(n), None, 16)]
    ds = C.CellBatches(store.path, units, C.CellInput(augment=True), batch_size=4, shuffle_buffer=8, seed=1)
    order = [int(r) for b in C.make_loader(ds) for r in b["rows"]]
    assert sorted(order) == list(range(n)) and order != sorted(order)
