"""The weight-free ``classical`` segmenter: nuclei from the blue channel, cells grown over
the cytoplasm (red + yellow) by a seeded watershed.

Works at the mask resolution (images of 1024 px or more are first reduced by block means,
see :func:`mask_shape_for` in the store layout). Size filters follow the image: the typical
nucleus area is measured on each image (median of the foreground objects) and small
objects are judged against it, with a floor given in pixels of a 2048² HPA image scaled to
the working resolution.

Steps: nuclei = smoothed blue above a local threshold (a window of a few nucleus
diameters, so dim nuclei next to bright ones survive) and above half the global Otsu
level, holes filled, touching nuclei split by a
watershed of the distance transform from one marker per nucleus-sized peak, objects below
a fifth of the median area dropped. Cells = seeded watershed from the nuclei over
(distance to the nucleus in nucleus radii - 2 x normalised cytoplasm signal), inside the
cytoplasm foreground (a quarter of its Otsu level), holes filled, cells below the median nucleus area dropped. A
nucleus carries its cell's id.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .postprocess import _drop_small, _sequential, upsample_labels


def downscale(plane: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Area-average a 2-D plane to ``shape`` (block means when the factor is an integer)."""
    plane = np.asarray(plane, dtype=np.float32)
    h, w = plane.shape
    if (h, w) == tuple(shape):
        return plane
    fy, fx = h // shape[0], w // shape[1]
    if fy * shape[0] == h and fx * shape[1] == w:
        return plane.reshape(shape[0], fy, shape[1], fx).mean(axis=(1, 3))
    from skimage.transform import resize

    return resize(plane, shape, order=1, anti_aliasing=True, preserve_range=True).astype(np.float32)


def _otsu(values: np.ndarray) -> float:
    from skimage.filters import threshold_otsu

    if values.size == 0 or float(values.max()) == float(values.min()):
        return float(values.max()) if values.size else 0.0
    return float(threshold_otsu(values))


def segment_nuclei(blue: np.ndarray, *, min_area: float = 8.0, split: bool = True,
                   local_offset: float = 0.1) -> np.ndarray:
    """Label nuclei in one grey image (any dtype). ``min_area``: absolute floor in pixels."""
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    img = np.asarray(blue, dtype=np.float32)
    if img.size == 0 or float(img.max()) <= float(img.min()):
        return np.zeros(img.shape, np.uint16)
    from skimage.filters import threshold_local

    smooth = ndi.gaussian_filter(img, 1.0)
    background = float(np.percentile(smooth, 5))
    t_global = _otsu(smooth)
    # typical nucleus size from a first global threshold
    lab, n = ndi.label(ndi.binary_fill_holes(smooth > t_global))
    if n == 0:
        return np.zeros(img.shape, np.uint16)
    areas = np.bincount(lab.ravel())[1:]
    big = areas[areas >= min_area]
    median = float(np.median(big)) if len(big) else float(min_area)
    diameter = 2.0 * np.sqrt(median / np.pi)
    # local threshold over a few nucleus diameters (dim nuclei beside bright ones), with a
    # global floor at half the Otsu level (no nuclei in the background noise)
    block = int(max(15, 2.5 * diameter)) | 1
    t_local = threshold_local(smooth, block, offset=-local_offset * (t_global - background))
    fg = (smooth > t_local) & (smooth > background + 0.5 * (t_global - background))
    fg = ndi.binary_opening(fg, iterations=1)
    fg = ndi.binary_fill_holes(fg)
    lab, n = ndi.label(fg)
    if n == 0:
        return np.zeros(img.shape, np.uint16)
    lab = _drop_small(lab, max(min_area, median / 5.0))
    if split and lab.any():
        radius = max(2.0, np.sqrt(median / np.pi))
        dist = ndi.distance_transform_edt(lab > 0)
        dist = ndi.gaussian_filter(dist, max(1.0, radius / 4.0))
        peaks = peak_local_max(dist, min_distance=max(2, int(radius * 0.7)), labels=lab,
                               threshold_abs=radius * 0.3, exclude_border=False)
        markers = np.zeros(lab.shape, np.int32)
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
        # every object keeps at least one marker
        unmarked = np.setdiff1d(np.unique(lab[lab > 0]), np.unique(lab[markers > 0]))
        if len(unmarked):
            centers = ndi.maximum_position(dist, lab, unmarked)
            for k, (r, c) in enumerate(centers, start=len(peaks) + 1):
                markers[r, c] = k
        lab = watershed(-dist, markers, mask=lab > 0)
        lab = _drop_small(lab, max(min_area, median / 5.0))
    return _sequential(lab)


def segment_cells(cyto: np.ndarray, nuclei: np.ndarray, *, min_area: float = 8.0, fg_fraction: float = 0.25,
                  intensity_weight: float = 2.0) -> np.ndarray:
    """Grow cells from labelled ``nuclei`` over the cytoplasm signal ``cyto`` (float)."""
    from skimage.segmentation import watershed

    if not nuclei.any():
        return np.zeros(nuclei.shape, np.uint16)
    nuc_areas = np.bincount(nuclei.ravel())[1:]
    median = float(np.median(nuc_areas[nuc_areas > 0]))
    radius = max(1.0, np.sqrt(median / np.pi))
    smooth = ndi.gaussian_filter(np.asarray(cyto, np.float32), max(1.0, radius / 18.0))
    hi = float(np.percentile(smooth, 99))
    smooth = smooth / hi if hi > 0 else smooth
    fg = (smooth > fg_fraction * _otsu(smooth)) | (nuclei > 0)
    fg = ndi.binary_fill_holes(ndi.binary_opening(fg, iterations=1) | (nuclei > 0))
    # flood from the nuclei: near a nucleus and bright cytoplasm first (distance in nucleus radii)
    landscape = ndi.distance_transform_edt(nuclei == 0) / radius - intensity_weight * smooth
    cells = watershed(landscape, nuclei.astype(np.int32), mask=fg)
    cells = _drop_small(cells, max(min_area, median))
    # fill holes per cell
    filled = np.zeros_like(cells)
    for i, sl in enumerate(ndi.find_objects(cells), start=1):
        if sl is None:
            continue
        m = ndi.binary_fill_holes(cells[sl] == i)
        filled[sl][m & (filled[sl] == 0)] = i
    return filled


class ClassicalSegmenter:
    """``segment(images)``: RGBY uint8 ``[4, H, W]`` -> (nuclei, cells) label images.

    ``mask_scale``: working scale (None: 0.25 for images of 1024 px or more, else 1.0).
    """

    name = "classical"

    def __init__(self, mask_scale: float | None = None) -> None:
        self.mask_scale = mask_scale

    def _scale_for(self, h: int, w: int) -> float:
        if self.mask_scale is not None:
            return float(self.mask_scale)
        return 0.25 if min(h, w) >= 1024 else 1.0

    def segment_scaled(self, images, shapes) -> list[tuple[np.ndarray, np.ndarray]]:
        """Labels at the given mask ``shapes`` (one (h, w) per image)."""
        out = []
        for img, shape in zip(images, shapes):
            img = np.asarray(img)
            area = (shape[0] * shape[1]) / (2048.0 * 2048.0)  # floors in pixels of a 2048² image, scaled
            blue = downscale(img[2], shape)
            nuclei = segment_nuclei(blue, min_area=max(4.0, 300.0 * area))
            red = downscale(img[0], shape)
            yellow = downscale(img[3], shape)
            cyto = _norm(red) + _norm(yellow)
            cells = segment_cells(cyto, nuclei, min_area=max(8.0, 3000.0 * area))
            cells = _sequential(cells)
            nuclei_out = np.where(nuclei > 0, cells, 0).astype(cells.dtype)
            out.append((nuclei_out, cells))
        return out

    def mask_shape(self, h: int, w: int) -> tuple[int, int]:
        s = self._scale_for(h, w)
        return max(1, int(round(h * s))), max(1, int(round(w * s)))

    def segment(self, images) -> list[tuple[np.ndarray, np.ndarray]]:
        images = [np.asarray(i) for i in images]
        shapes = [self.mask_shape(*i.shape[1:]) for i in images]
        res = self.segment_scaled(images, shapes)
        return [(upsample_labels(n, i.shape[1:]), upsample_labels(c, i.shape[1:])) for (n, c), i in zip(res, images)]


def _norm(plane: np.ndarray) -> np.ndarray:
    hi = float(np.percentile(plane, 99.5))
    return np.clip(plane / hi, 0, 1) if hi > 0 else np.zeros_like(plane)
