"""Post-processing on the real HPA network outputs, and the classical segmenter on real images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hpacli.segment.postprocess import label_cells_at_map_scale, label_cells_from_maps, upsample_labels

FIX = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
HPA = FIX / "hpa-real-512"
DSB = FIX / "nuclei-dsb2018"
needs_hpa = pytest.mark.skipif(not HPA.exists(), reason="hpa-real-512 fixture not available")
needs_dsb = pytest.mark.skipif(not DSB.exists(), reason="nuclei-dsb2018 fixture not available")


def match(ref: np.ndarray, pred: np.ndarray):
    """IoU matrix of every reference and predicted instance (rows/cols = present ids)."""
    r = ref.ravel().astype(np.int64)
    p = pred.ravel().astype(np.int64)
    nr, npd = int(r.max()) + 1, int(p.max()) + 1
    inter = np.bincount(r * npd + p, minlength=nr * npd).reshape(nr, npd).astype(float)
    ar, ap = inter.sum(1), inter.sum(0)
    iou = inter / (ar[:, None] + ap[None, :] - inter + 1e-12)
    rows = np.flatnonzero(ar[1:] > 0) + 1
    cols = np.flatnonzero(ap[1:] > 0) + 1
    return iou[np.ix_(rows, cols)], rows, cols


def f1_at(ref, pred, thr=0.5):
    iou, rows, cols = match(ref, pred)
    tp = int((iou > thr).sum())  # IoU > 0.5 matches are unique
    return 2 * tp / (len(rows) + len(cols))


@pytest.fixture(scope="module")
def maps():
    import tifffile

    return tifffile.imread(HPA / "nuclei_model_output.tif"), tifffile.imread(HPA / "cell_model_output.tif")


@needs_hpa
def test_fast_on_real_maps(maps):
    nm, cm = maps
    nuclei, cells = label_cells_from_maps(nm, cm)
    assert cells.shape == (2048, 2048) and cells.dtype == np.uint16
    n = int(cells.max())
    assert 10 <= n <= 16  # about 14 cells in view, a few cut by the edge
    assert set(np.unique(cells)) == set(range(n + 1))  # numbered 1..n
    # every nucleus carries its cell's id and lies inside it
    inside = nuclei > 0
    assert np.array_equal(nuclei[inside], cells[inside])
    assert len(np.unique(nuclei[inside])) >= n - 2
    # uint8 maps give the same cells; map-scale variant is the upsampled one's source
    n8, c8 = label_cells_from_maps((nm * 255).round().astype(np.uint8), (cm * 255).round().astype(np.uint8))
    iou, _, _ = match(cells, c8)
    assert iou.max(1).mean() > 0.95
    ns, cs = label_cells_at_map_scale(nm, cm, output_size=(2048, 2048))
    assert np.array_equal(upsample_labels(cs, (2048, 2048)), cells)


@needs_hpa
def test_output_size_and_bad_input(maps):
    nm, cm = maps
    _, cells = label_cells_from_maps(nm, cm, output_size=(1728, 1728))
    assert cells.shape == (1728, 1728) and cells.max() > 5
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        label_cells_from_maps(nm[0], cm)
    with pytest.raises(ValueError, match="0..1"):
        label_cells_from_maps(nm * 7, cm)
    with pytest.raises(ValueError, match="mode"):
        label_cells_from_maps(nm, cm, mode="slow")
    z = np.zeros_like(nm)
    z[0] = 1
    nuc, cells = label_cells_from_maps(z, z)
    assert cells.max() == 0 and nuc.max() == 0


@needs_hpa
@pytest.mark.slow
def test_fast_matches_exact(maps):
    nm, cm = maps
    _, fast = label_cells_from_maps(nm, cm, mode="fast")
    _, exact = label_cells_from_maps(nm, cm, mode="exact")
    iou, rows, cols = match(exact, fast)
    best = iou.max(1)
    assert best.mean() >= 0.9
    assert (best >= 0.5).all()  # no exact cell left unmatched (none is dropped by the edge rule here)


@needs_dsb
def test_classical_nuclei_f1_on_dsb2018():
    import tifffile

    from hpacli.segment.classical import segment_nuclei

    img = tifffile.imread(DSB / "img2d.tif")
    gt = tifffile.imread(DSB / "mask2d.tif")
    pred = segment_nuclei(img)
    assert f1_at(gt, pred) >= 0.8


@needs_hpa
def test_classical_finds_the_cells_of_the_real_image(maps):
    import tifffile

    from hpacli.segment.classical import ClassicalSegmenter

    x = tifffile.imread(HPA / "cell_model_input.tif")  # red, yellow, blue at 0.25 of 2048
    rgby = np.zeros((4, 512, 512), np.uint8)
    rgby[0], rgby[3], rgby[2] = (np.clip(x[k] * 255, 0, 255).astype(np.uint8) for k in range(3))
    (nuc, cells), = ClassicalSegmenter().segment_scaled([rgby], [(512, 512)])
    _, ref = label_cells_at_map_scale(*maps, output_size=(2048, 2048))
    iou, rows, cols = match(ref, cells)
    assert abs(len(cols) - len(rows)) <= 3
    assert iou.max(1).mean() >= 0.65
    assert (iou.max(1) >= 0.5).mean() >= 0.75
    # full-size API: labels come back at the image size
    (n2, c2), = ClassicalSegmenter().segment([rgby])
    assert c2.shape == (512, 512) and np.array_equal(c2, cells)


def test_classical_blank_image_has_no_cells():
    from hpacli.segment.classical import ClassicalSegmenter

    (nuc, cells), = ClassicalSegmenter().segment([np.zeros((4, 64, 64), np.uint8)])
    assert cells.max() == 0 and nuc.max() == 0
