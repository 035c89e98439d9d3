"""The 19 green (protein) patterns, each tied to the cell's geometry.

``pattern_map(c, geom, rng, cells)`` returns a float32 map over the whole image with
values of about 0..1 where the pattern of class ``c`` shows; the caller multiplies it by
a per-cell weight that is 0 for cells without the class. Point-like patterns draw their
points only for ``cells``. Smallest features are ~1 px at 256 px (``u``), so they stay
visible when an image is downscaled by two.
"""

from __future__ import annotations

import numpy as np

from .synth_cells import (
    Geometry,
    er_map,
    microtubule_map,
    nucleoli,
    ridges,
    smooth_noise,
    spindle_map,
    splat_dots,
)

PATTERN_NAMES = {
    0: "fills the nucleus (less in nucleoli)",
    1: "rim of the nucleus",
    2: "1-3 nucleoli (blobs in the nucleus)",
    3: "tiny dots inside the nucleoli",
    4: "many small dots in the nucleus",
    5: "a few brighter dots in the nucleus",
    6: "fine reticular network, densest around the nucleus",
    7: "perinuclear cap on the centrosome side",
    8: "coarse curvy filament network",
    9: "straight parallel fibres across the cell",
    10: "fibres radiating from the centrosome",
    11: "bipolar spindle (mitotic cells only)",
    12: "1-2 dots beside the nucleus",
    13: "rim of the cell",
    14: "short threads, mostly around the nucleus",
    15: "one large blob beside the nucleus",
    16: "fills the cytoplasm",
    17: "puncta over the cytoplasm",
    18: "no signal",
}


def _lumpy(geom: Geometry, rng: np.random.Generator) -> np.ndarray:
    return smooth_noise(rng, geom.shape, 2.0 * geom.u)


def _nuclear_dots(geom, rng, cells, per_area: float, fixed: tuple[int, int] | None, sigma: float, wrange):
    groups = geom.groups("nucleus")
    ys, xs, ws = [], [], []
    for k in cells:
        n_pix = groups.count(k)
        if n_pix == 0:
            continue
        m = int(rng.integers(*fixed)) if fixed else max(3, int(rng.poisson(n_pix * per_area)))
        py, px = groups.sample(rng, k, m)
        ys.append(py)
        xs.append(px)
        ws.append(rng.uniform(*wrange, m))
    if not ys:
        return np.zeros(geom.shape, dtype=np.float32)
    return splat_dots(geom.shape, np.concatenate(ys), np.concatenate(xs), np.concatenate(ws), sigma)


def pattern_map(c: int, geom: Geometry, rng: np.random.Generator, cells) -> np.ndarray:
    u = geom.u
    shape = geom.shape
    cells = [int(k) for k in cells]
    if c == 0:  # nucleoplasm
        nuc_map, _ = nucleoli(geom, rng)
        return geom.nuc_soft * (0.85 + 0.12 * _lumpy(geom, rng)) * (1 - 0.7 * np.clip(nuc_map, 0, 1))
    if c == 1:  # nuclear membrane
        ring = 4.0 * geom.nuc_soft * (1.0 - geom.nuc_soft)
        return np.clip(1.3 * ring, 0, 1) * (0.8 + 0.2 * _lumpy(geom, rng)) + 0.05 * geom.nuc_soft
    if c == 2:  # nucleoli
        nuc_map, _ = nucleoli(geom, rng)
        # in mitosis nucleolar proteins coat the condensed chromosomes
        return np.clip(nuc_map, 0, 1) + (0.06 + 0.5 * geom.lookup(geom.mitotic)) * geom.nuc_soft
    if c == 3:  # fibrillar centres
        _, spots = nucleoli(geom, rng)
        keep = set(cells)
        ys, xs = [], []
        for k, y, x, s in spots:
            if k not in keep:
                continue
            m = int(rng.integers(2, 6))
            ys.append(y + rng.normal(0, 0.5 * s, m))
            xs.append(x + rng.normal(0, 0.5 * s, m))
        coat = 0.4 * geom.lookup(geom.mitotic) * geom.nuc_soft  # chromosome coating in mitosis
        if not ys:
            return coat
        ys, xs = np.concatenate(ys), np.concatenate(xs)
        return np.clip(splat_dots(shape, ys, xs, np.full(len(ys), 1.1), 1.0 * u), 0, 1.2) * geom.nuc_soft + coat
    if c == 4:  # nuclear speckles
        dots = _nuclear_dots(geom, rng, cells, 1 / (22 * u * u), None, 1.2 * u, (0.5, 1.0))
        nuc_map, _ = nucleoli(geom, rng)
        return (np.clip(dots, 0, 1.2) + 0.18 * geom.nuc_soft) * (1 - 0.8 * np.clip(nuc_map, 0, 1))
    if c == 5:  # nuclear bodies
        dots = _nuclear_dots(geom, rng, cells, 0, (3, 9), 1.6 * u, (0.8, 1.2))
        return np.clip(dots, 0, 1.3) + 0.05 * geom.nuc_soft
    if c == 6:  # endoplasmic reticulum
        return er_map(geom, rng)
    if c == 7:  # Golgi apparatus
        phi = geom.lookup(geom.phi)
        dth = np.angle(np.exp(1j * (geom.theta - phi))).astype(np.float32)
        req = geom.lookup(np.maximum(geom.r_eq, 1.0))
        ang = np.exp(-((dth / 0.75) ** 2))
        t = geom.r - geom.rho
        rad = np.exp(-(((t - 0.13 * req) / (0.09 * req)) ** 2))
        frag = np.clip(0.45 + 0.8 * smooth_noise(rng, shape, 1.3 * u), 0, 1.3)
        mit = geom.lookup(geom.mitotic)
        cap = ang * rad * frag * geom.cell_soft * (1 - geom.nuc_soft)
        return cap * (1 - mit) + mit * 0.2 * geom.cyto_soft * frag
    if c == 8:  # intermediate filaments
        net = ridges(smooth_noise(rng, shape, 4.0 * u), 0.25)
        req = geom.lookup(np.maximum(geom.r_eq, 1.0))
        prof = 0.5 + 0.5 * np.exp(-np.maximum(geom.r - geom.rho, 0) / (0.45 * req))
        return net * prof * geom.cyto_soft
    if c == 9:  # actin filaments
        alpha = geom.lookup(rng.uniform(0, np.pi, geom.n + 1))
        yy, xx = np.indices(shape, dtype=np.float32)
        proj = xx * np.cos(alpha) + yy * np.sin(alpha)
        period = 6.0 * u
        wobble = 0.6 * smooth_noise(rng, shape, 10 * u)
        lines = (0.5 + 0.5 * np.cos(2 * np.pi * proj / period + wobble)) ** 6
        along = np.clip(0.6 + 0.6 * smooth_noise(rng, shape, 3 * u), 0, 1)
        cortex = np.exp(-(geom.d_edge - 1) / (1.5 * u)) * (geom.labels > 0)
        return np.clip(lines * along * geom.cell_soft + 0.4 * cortex, 0, 1.2)
    if c == 10:  # microtubules: the same fibres as the red reference channel
        return microtubule_map(geom, rng)
    if c == 11:  # mitotic spindle
        return spindle_map(geom)
    if c == 12:  # centrosome
        keep = set(cells)
        owner, cy, cx = geom.centrosomes()
        sel = np.array([k in keep for k in owner], dtype=bool)
        ys, xs = list(cy[sel]), list(cx[sel])
        for k, y, x in zip(owner[sel], cy[sel], cx[sel]):
            if not geom.mitotic[k] and rng.random() < 0.5:  # a second dot close by
                d = rng.normal(0, 2.0 * u, 2)
                ys.append(y + d[0])
                xs.append(x + d[1])
        dots = splat_dots(shape, ys, xs, np.full(len(ys), 1.3), 1.5 * u)
        return np.clip(dots, 0, 1.2) + 0.05 * geom.cyto_soft
    if c == 13:  # plasma membrane
        rim = np.exp(-(geom.d_edge - 1) / (1.3 * u)) * (geom.labels > 0)
        return np.clip(rim, 0, 1) * (0.75 + 0.2 * _lumpy(geom, rng)) + 0.04 * geom.cell_soft
    if c == 14:  # mitochondria
        threads = ridges(smooth_noise(rng, shape, 2.2 * u), 0.35)
        gaps = np.clip(1.5 * smooth_noise(rng, shape, 3 * u), 0, 1)
        req = geom.lookup(np.maximum(geom.r_eq, 1.0))
        prof = 0.35 + 0.65 * np.exp(-np.maximum(geom.r - geom.rho, 0) / (0.4 * req))
        return threads * gaps * prof * geom.cyto_soft
    if c == 15:  # aggresome
        by, bx, bw, sig = [], [], [], []
        for k in cells:
            if geom.mitotic[k]:
                continue
            d = geom.nucleus_radius(k, geom.phi[k]) + 0.16 * geom.r_eq[k]
            by.append(geom.cy[k] + d * np.sin(geom.phi[k]))
            bx.append(geom.cx[k] + d * np.cos(geom.phi[k]))
            bw.append(1.4)
            sig.append(max(0.17 * geom.r_eq[k], 3.0 * u))
        s = float(np.median(sig)) if sig else 3.0 * u
        blob = np.clip(splat_dots(shape, by, bx, bw, s), 0, 1.2)
        return blob * geom.cell_soft + 0.08 * geom.cyto_soft
    if c == 16:  # cytosol
        return geom.cyto_soft * (0.85 + 0.12 * _lumpy(geom, rng)) + 0.2 * geom.nuc_soft * geom.cell_soft
    if c == 17:  # vesicles
        groups = geom.groups("cyto")
        ys, xs, ws = [], [], []
        for k in cells:
            m = max(4, int(rng.poisson(groups.count(k) / (40 * u * u))))
            py, px = groups.sample(rng, k, m)
            ys.append(py)
            xs.append(px)
            ws.append(rng.uniform(0.45, 1.0, len(py)))
        if not ys:
            return np.zeros(shape, dtype=np.float32)
        dots = splat_dots(shape, np.concatenate(ys), np.concatenate(xs), np.concatenate(ws), 1.2 * u)
        return np.clip(dots, 0, 1.2) + 0.04 * geom.cyto_soft
    if c == 18:  # negative
        return np.zeros(shape, dtype=np.float32)
    raise ValueError(f"no pattern for class {c}")

