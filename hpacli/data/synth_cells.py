"""Cell geometry and the three reference channels (red, blue, yellow) of a synthetic image.

Everything is vectorised over the whole image: per-cell parameters live in small arrays
indexed by cell id (index 0 = background) and are looked up per pixel through the label
image. Lengths are given in units of ``u = size / 256`` so an image of any size shows the
same field of view at another resolution.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

TWO_PI = 2.0 * np.pi


# ---------------------------------------------------------------------------- random helpers
def child_rng(base: tuple[int, ...], name: str) -> np.random.Generator:
    """An independent generator for one named part of one image (stable across runs and
    independent of which other parts were drawn)."""
    return np.random.default_rng([*base, zlib.crc32(name.encode())])


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise with unit standard deviation (float32).

    Large ``sigma`` is filtered on a coarser grid and upsampled (bilinear): same look, a
    fraction of the cost.
    """
    h, w = shape
    f = max(1, int(sigma // 3))
    if f > 1:
        hc, wc = h // f + 3, w // f + 3
        small = ndimage.gaussian_filter(rng.standard_normal((hc, wc), dtype=np.float32), sigma / f, mode="wrap")
        out = ndimage.zoom(small, f, order=1, prefilter=False)[:h, :w]
    else:
        out = ndimage.gaussian_filter(rng.standard_normal((h, w), dtype=np.float32), max(sigma, 0.3), mode="wrap")
    out = out.astype(np.float32, copy=False)
    out -= out.mean()
    out /= out.std() + 1e-6
    return out


def ridges(n: np.ndarray, width: float) -> np.ndarray:
    """Thin curvy lines along the zero crossings of a noise field (a network texture)."""
    return np.exp(-((n / width) ** 2))


def splat_dots(shape: tuple[int, int], ys, xs, weights, sigma: float) -> np.ndarray:
    """Gaussian dots at sub-pixel positions; a dot of weight w peaks at about w."""
    h, w = shape
    img = np.zeros(h * w, dtype=np.float32)
    ys = np.asarray(ys, dtype=np.float64)
    xs = np.asarray(xs, dtype=np.float64)
    wt = np.asarray(weights, dtype=np.float64) * (2.0 * np.pi * sigma * sigma)
    if ys.size:
        y0 = np.floor(ys).astype(np.int64)
        x0 = np.floor(xs).astype(np.int64)
        fy = ys - y0
        fx = xs - x0
        for dy, dx, ww in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
            yy = y0 + dy
            xx = x0 + dx
            ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
            np.add.at(img, yy[ok] * w + xx[ok], (wt * ww)[ok])
    return ndimage.gaussian_filter(img.reshape(h, w), sigma, truncate=3.0)


class PixelGroups:
    """The pixels of a mask grouped by cell id, to draw random points inside one cell's region."""

    def __init__(self, mask: np.ndarray, labels: np.ndarray, n_cells: int) -> None:
        idx = np.flatnonzero(mask)
        lab = labels.ravel()[idx]
        order = np.argsort(lab, kind="stable")
        self.idx = idx[order]
        self.start = np.searchsorted(lab[order], np.arange(n_cells + 2))
        self.width = labels.shape[1]

    def count(self, cell: int) -> int:
        return int(self.start[cell + 1] - self.start[cell])

    def sample(self, rng: np.random.Generator, cell: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        n = self.count(cell)
        if n == 0 or k <= 0:
            return np.zeros(0), np.zeros(0)
        pick = self.idx[self.start[cell] + rng.integers(0, n, k)]
        jitter = rng.uniform(-0.5, 0.5, (2, k))
        return pick // self.width + jitter[0], pick % self.width + jitter[1]


# ---------------------------------------------------------------------------- geometry
@dataclass
class Geometry:
    """One image's cells. Per-cell arrays have length ``n + 1`` (index 0 = background)."""

    size: int
    u: float
    labels: np.ndarray  # int32 [H, W]; 0 background, cells 1..n
    nucleus: np.ndarray  # bool [H, W]
    n: int
    border: np.ndarray  # touches the image edge
    mitotic: np.ndarray
    area: np.ndarray
    r_eq: np.ndarray  # radius of the disc of the cell's area
    cy: np.ndarray  # nucleus centre
    cx: np.ndarray
    phi: np.ndarray  # direction of the centrosome / Golgi side (spindle axis in mitosis)
    r_m: np.ndarray  # radius of a rounded mitotic cell
    # per-pixel fields
    d_edge: np.ndarray  # distance to the cell's edge (0 outside cells)
    dy: np.ndarray  # offset from the own nucleus centre
    dx: np.ndarray
    r: np.ndarray
    theta: np.ndarray
    rho: np.ndarray  # nucleus radius in the pixel's direction
    nuc_soft: np.ndarray  # nucleus mask softened (0..1)
    cell_soft: np.ndarray  # cell mask softened at the edge (0..1)
    cache: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return self.labels.shape

    @property
    def cyto_soft(self) -> np.ndarray:
        if "cyto_soft" not in self.cache:
            self.cache["cyto_soft"] = self.cell_soft * (1.0 - self.nuc_soft)
        return self.cache["cyto_soft"]

    def lookup(self, per_cell: np.ndarray) -> np.ndarray:
        return np.asarray(per_cell, dtype=np.float32)[self.labels]

    def groups(self, name: str) -> PixelGroups:
        """Pixel groups per cell: ``nucleus``, ``inner_nucleus``, ``cyto``."""
        if name not in self.cache:
            if name == "nucleus":
                mask = self.nucleus
            elif name == "inner_nucleus":
                mask = self.nucleus & ((self.rho - self.r) > 0.3 * self.rho) & ~self.lookup(self.mitotic).astype(bool)
            elif name == "cyto":
                mask = (self.labels > 0) & ~self.nucleus & (self.d_edge > 1.5 * self.u)
            else:
                raise KeyError(name)
            self.cache[name] = PixelGroups(mask, self.labels, self.n)
        return self.cache[name]

    def centrosomes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(cell, y, x) of each cell's centrosome(s): one beside the nucleus in interphase,
        the two spindle poles in mitosis."""
        cells, ys, xs = [], [], []
        for k in range(1, self.n + 1):
            if self.mitotic[k]:
                p = 0.62 * self.r_m[k]
                for s in (-1.0, 1.0):
                    cells.append(k)
                    ys.append(self.cy[k] + s * p * np.sin(self.phi[k]))
                    xs.append(self.cx[k] + s * p * np.cos(self.phi[k]))
            else:
                d = self.nucleus_radius(k, self.phi[k]) + 3.0 * self.u
                cells.append(k)
                ys.append(self.cy[k] + d * np.sin(self.phi[k]))
                xs.append(self.cx[k] + d * np.cos(self.phi[k]))
        return np.array(cells, dtype=np.int64), np.array(ys), np.array(xs)

    def nucleus_radius(self, k: int, angle: float) -> float:
        a, b, orient, h3, p3, h4, p4 = self.cache["nuc_params"][k]
        t = angle - orient
        base = a * b / np.sqrt((b * np.cos(t)) ** 2 + (a * np.sin(t)) ** 2)
        return float(base * (1 + h3 * np.cos(3 * angle + p3) + h4 * np.cos(4 * angle + p4)))


_GRIDS: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    if (h, w) not in _GRIDS:
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        _GRIDS.clear()
        _GRIDS[(h, w)] = (yy, xx)
    return _GRIDS[(h, w)]


def _seeds(rng: np.random.Generator, size: int, n: int, margin: float) -> np.ndarray:
    """Roughly evenly spread points (dart throwing) over the image plus a margin."""
    lo, hi = -margin, size + margin
    spacing = (hi - lo) / np.sqrt(n)
    d2min = (0.72 * spacing) ** 2
    cand = rng.uniform(lo, hi, (n * 40, 2))
    pts = np.empty((n, 2))
    k = 0
    for p in cand:
        if k and np.min(np.sum((pts[:k] - p) ** 2, axis=1)) < d2min:
            continue
        pts[k] = p
        k += 1
        if k == n:
            break
    return pts[:k]


def _boundary(labels: np.ndarray) -> np.ndarray:
    b = np.zeros(labels.shape, dtype=bool)
    dv = labels[:-1] != labels[1:]
    dh = labels[:, :-1] != labels[:, 1:]
    b[:-1] |= dv
    b[1:] |= dv
    b[:, :-1] |= dh
    b[:, 1:] |= dh
    return b


def make_geometry(
    rng: np.random.Generator, size: int, n_cells: float, confluence: float, mitotic_rate: float, min_mitotic: int
) -> Geometry:
    """Irregular touching cells (a warped, weighted Voronoi partition cut at a random
    distance from each seed), one nucleus each, some rounded mitotic cells."""
    u = size / 256.0
    h = w = size
    yy, xx = _grid(h, w)
    margin = 0.12 * size
    n_seeds = max(3, int(round(n_cells * ((size + 2 * margin) / size) ** 2)))
    seeds = _seeds(rng, size, n_seeds, margin)
    k_seeds = len(seeds)
    spacing = (size + 2 * margin) / np.sqrt(k_seeds)
    weight = rng.uniform(0.8, 1.25, k_seeds)
    extent = spacing * (0.45 + 0.4 * confluence) * weight * rng.uniform(0.9, 1.1, k_seeds)

    amp = 0.13 * spacing
    wy = yy + amp * smooth_noise(rng, (h, w), 0.3 * spacing)
    wx = xx + amp * smooth_noise(rng, (h, w), 0.3 * spacing)
    best = np.full((h, w), np.inf, dtype=np.float32)
    lab = np.zeros((h, w), dtype=np.int32)
    for k in range(k_seeds):
        d2 = ((wy - seeds[k, 0]) ** 2 + (wx - seeds[k, 1]) ** 2) * np.float32(1.0 / weight[k] ** 2)
        m = d2 < best
        best[m] = d2[m]
        lab[m] = k + 1
    dist = np.sqrt(best) * weight[lab - 1].astype(np.float32)
    wobble = 1.0 + 0.18 * smooth_noise(rng, (h, w), 0.2 * spacing)
    lab[dist > extent[lab - 1] * wobble] = 0

    # one connected piece per cell; drop slivers (mostly cells cut by the border)
    min_area = 0.18 * np.pi * (0.5 * spacing) ** 2
    keep = []
    for k, sl in enumerate(ndimage.find_objects(lab), start=1):
        if sl is None:
            continue
        sub = lab[sl] == k
        cc, ncc = ndimage.label(sub)
        if ncc > 1:
            sizes = np.bincount(cc.ravel())
            sizes[0] = 0
            big = int(np.argmax(sizes))
            lab[sl][sub & (cc != big)] = 0
            area = sizes[big]
        else:
            area = int(sub.sum())
        if area < min_area:
            lab[sl][sub] = 0
        else:
            keep.append(k)
    remap = np.zeros(k_seeds + 1, dtype=np.int32)
    remap[keep] = np.arange(1, len(keep) + 1)
    labels = remap[lab]
    n = len(keep)
    ids = np.arange(1, n + 1)

    def edge_distance(lbl: np.ndarray) -> np.ndarray:
        inner = (lbl > 0) & ~_boundary(lbl)
        return ndimage.distance_transform_edt(inner).astype(np.float32)

    d_edge = edge_distance(labels)
    border = np.zeros(n + 1, dtype=bool)
    for edge in (labels[0], labels[-1], labels[:, 0], labels[:, -1]):
        border[np.unique(edge)] = True
    border[0] = False
    maxd = np.zeros(n + 1)
    pole = np.zeros((n + 1, 2))
    if n:
        maxd[1:] = ndimage.maximum(d_edge, labels, ids)
        pole[1:] = np.array(ndimage.maximum_position(d_edge, labels, ids), dtype=np.float64)

    # mitotic cells: rounded, smaller, detached from their neighbours
    mitotic = np.zeros(n + 1, dtype=bool)
    r_m = np.zeros(n + 1)
    candidates = [k for k in ids if not border[k] and maxd[k] >= 0.22 * spacing]
    if candidates:
        n_mit = max(int(rng.binomial(n, mitotic_rate)), min_mitotic)
        n_mit = min(n_mit, len(candidates))
        chosen = rng.choice(candidates, size=n_mit, replace=False) if n_mit else []
        for k in sorted(int(c) for c in chosen):
            mitotic[k] = True
            r_m[k] = min(0.95 * maxd[k], 0.4 * spacing) * rng.uniform(0.85, 1.0)
        if mitotic.any():
            m_pix = mitotic[labels]
            rr = np.hypot(yy - pole[labels, 0], xx - pole[labels, 1])
            cut = m_pix & (rr > r_m[labels] * (1.0 + 0.04 * wobble))
            labels[cut] = 0
            d_edge = edge_distance(labels)
            maxd[1:] = ndimage.maximum(d_edge, labels, ids)

    area = np.zeros(n + 1)
    if n:
        area[1:] = ndimage.sum(np.ones_like(d_edge), labels, ids)
    r_eq = np.sqrt(area / np.pi)

    # nuclei: a perturbed ellipse at the point farthest from the cell's edge
    a = np.minimum(0.78 * maxd, rng.uniform(0.42, 0.55, n + 1) * r_eq)
    b = a * rng.uniform(0.72, 0.95, n + 1)
    orient = rng.uniform(0, np.pi, n + 1)
    h3 = rng.uniform(0.0, 0.05, n + 1)
    p3 = rng.uniform(0, TWO_PI, n + 1)
    h4 = rng.uniform(0.0, 0.04, n + 1)
    p4 = rng.uniform(0, TWO_PI, n + 1)
    phi = rng.uniform(0, TWO_PI, n + 1)
    # mitotic chromatin: a condensed plate (metaphase) or two (anaphase); rho is a small disc
    anaphase = mitotic & (rng.random(n + 1) < 0.35)
    a[mitotic] = 0.3 * r_m[mitotic]
    b[mitotic] = a[mitotic]
    h3[mitotic] = 0
    h4[mitotic] = 0
    a[0] = b[0] = 1.0
    cy, cx = pole[:, 0].copy(), pole[:, 1].copy()

    dy = yy - cy[labels].astype(np.float32)
    dx = xx - cx[labels].astype(np.float32)
    r = np.hypot(dy, dx)
    theta = np.arctan2(dy, dx)
    al, bl, ol = (v.astype(np.float32)[labels] for v in (a, b, orient))
    t = theta - ol
    rho = al * bl / np.sqrt((bl * np.cos(t)) ** 2 + (al * np.sin(t)) ** 2)
    rho *= 1 + h3.astype(np.float32)[labels] * np.cos(3 * theta + p3.astype(np.float32)[labels])
    rho *= 1 + h4.astype(np.float32)[labels] * np.cos(4 * theta + p4.astype(np.float32)[labels])
    inside = labels > 0
    nucleus = inside & (r < rho) & (d_edge > 1.5 * u)
    if mitotic.any():
        m_pix = mitotic[labels]
        # plate coordinates: pu along the plate, pv along the spindle axis (phi)
        ph = phi.astype(np.float32)[labels]
        pv = dx * np.cos(ph) + dy * np.sin(ph)
        pu = -dx * np.sin(ph) + dy * np.cos(ph)
        rm = r_m.astype(np.float32)[labels]
        off = np.where(anaphase[labels], 0.28 * rm, 0.0)
        plate = (pu / (0.55 * rm + 1e-6)) ** 2 + ((np.abs(pv) - off) / (0.14 * rm + 1e-6)) ** 2 < 1.0
        nucleus = np.where(m_pix, inside & plate, nucleus)
    nuc_soft = ndimage.gaussian_filter(nucleus.astype(np.float32), 0.9 * u)
    cell_soft = np.clip(d_edge / (1.5 * u), 0.0, 1.0)

    geom = Geometry(
        size=size, u=u, labels=labels, nucleus=nucleus, n=n, border=border, mitotic=mitotic, area=area,
        r_eq=r_eq, cy=cy, cx=cx, phi=phi, r_m=r_m, d_edge=d_edge, dy=dy, dx=dx, r=r, theta=theta, rho=rho,
        nuc_soft=nuc_soft, cell_soft=cell_soft,
    )
    geom.cache["nuc_params"] = np.stack([a, b, orient, h3, p3, h4, p4], axis=1)
    geom.cache["anaphase"] = anaphase
    geom.cache["spacing"] = spacing
    return geom


# ---------------------------------------------------------------------------- shared textures
def nucleoli(geom: Geometry, rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[int, float, float, float]]]:
    """Nucleoli of interphase cells: a map peaking at ~1 and the list (cell, y, x, sigma)."""
    if "nucleoli" in geom.cache:
        return geom.cache["nucleoli"]
    u = geom.u
    groups = geom.groups("inner_nucleus")
    ys, xs, ws, out = [], [], [], []
    sigma = 2.9 * u
    for k in range(1, geom.n + 1):
        if geom.mitotic[k] or groups.count(k) == 0:
            continue
        m = int(rng.integers(1, 4))
        py, px = groups.sample(rng, k, m)
        for y, x in zip(py, px):
            out.append((k, float(y), float(x), sigma))
            # each nucleolus: a main blob and two lobes (irregular outline)
            lobes = rng.normal(0, 1.1 * u, (2, 2))
            ys += [y, y + lobes[0, 0], y + lobes[1, 0]]
            xs += [x, x + lobes[0, 1], x + lobes[1, 1]]
            ws += [1.0, 0.6, 0.5]
    m = np.clip(splat_dots(geom.shape, ys, xs, ws, sigma), 0, 1.2) * geom.nuc_soft
    geom.cache["nucleoli"] = (m, out)
    return geom.cache["nucleoli"]


def er_map(geom: Geometry, rng: np.random.Generator) -> np.ndarray:
    """A fine reticular network over the cytoplasm, densest around the nucleus, with the
    nuclear envelope (which is ER too)."""
    if "er" not in geom.cache:
        u = geom.u
        net = ridges(smooth_noise(rng, geom.shape, 1.3 * u), 0.45)
        req = geom.lookup(np.maximum(geom.r_eq, 1.0))
        outside = np.maximum(geom.r - geom.rho, 0.0)
        prof = 0.3 + 0.7 * np.exp(-outside / (0.35 * req))
        ring = 4.0 * geom.nuc_soft * (1.0 - geom.nuc_soft)
        mit = geom.lookup(geom.mitotic)
        body = (0.25 + 0.75 * net) * prof * geom.cyto_soft
        body = body * (1 - mit) + mit * geom.cyto_soft * (0.45 + 0.15 * net)
        geom.cache["er"] = np.clip(body + 0.5 * ring * (1 - mit), 0, 1.2)
    return geom.cache["er"]


def spindle_map(geom: Geometry) -> np.ndarray:
    """A bipolar spindle (fibres converging on two poles) in mitotic cells, 0 elsewhere."""
    if "spindle" not in geom.cache:
        out = np.zeros(geom.shape, dtype=np.float32)
        if geom.mitotic.any():
            u = geom.u
            m = geom.lookup(geom.mitotic)
            ph = geom.lookup(geom.phi)
            rm = geom.lookup(geom.r_m) + 1e-3
            pv = geom.dx * np.cos(ph) + geom.dy * np.sin(ph)
            pu = -geom.dx * np.sin(ph) + geom.dy * np.cos(ph)
            p = 0.62 * rm
            t = np.clip(pv / p, -1, 1)
            width = 0.42 * rm * (1 - t * t) + 0.8 * u
            body = np.exp(-((pu / width) ** 2)) * (np.abs(pv) < p)
            fibres = 0.5 + 0.5 * np.cos(5.0 * pu / width) ** 2
            poles = np.exp(-(pu**2 + (np.abs(pv) - p) ** 2) / (2 * (1.4 * u) ** 2))
            out = m * np.clip(0.8 * body * fibres + poles, 0, 1.2) * geom.cell_soft
        geom.cache["spindle"] = out.astype(np.float32)
    return geom.cache["spindle"]


def microtubule_map(geom: Geometry, rng: np.random.Generator) -> np.ndarray:
    """Interphase: fibres radiating from the centrosome over the cytoplasm; mitosis: the spindle."""
    if "mt" not in geom.cache:
        u = geom.u
        cells, ys, xs = geom.centrosomes()
        ccy = np.zeros(geom.n + 1)
        ccx = np.zeros(geom.n + 1)
        # the first centrosome of each cell is the aster's centre
        for k, y, x in zip(cells[::-1], ys[::-1], xs[::-1]):
            ccy[k], ccx[k] = y, x
        yy, xx = _grid(*geom.shape)
        ry = yy - geom.lookup(ccy)
        rx = xx - geom.lookup(ccx)
        rc = np.hypot(ry, rx)
        tc = np.arctan2(ry, rx)
        mfreq = geom.lookup(rng.integers(14, 22, geom.n + 1).astype(np.float32))
        warp = 0.6 * smooth_noise(rng, geom.shape, 6 * u)
        lines = (0.5 + 0.5 * np.cos(mfreq * tc + warp + 0.015 * rc / u)) ** 3
        near = np.exp(-rc / (5 * u))
        aster = lines * (1 - near) + 0.6 * near + np.exp(-(rc**2) / (2 * (2 * u) ** 2))
        fade = 0.6 + 0.4 * np.exp(-np.maximum(geom.r - geom.rho, 0) / (0.6 * geom.lookup(geom.r_eq) + 1))
        body = aster * fade * (geom.cyto_soft + 0.3 * geom.nuc_soft * geom.cell_soft)
        mit = geom.lookup(geom.mitotic)
        geom.cache["mt"] = np.clip(body * (1 - mit) + spindle_map(geom) + 0.2 * mit * geom.cell_soft, 0, 1.2)
    return geom.cache["mt"]


def reference_channels(geom: Geometry, base: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Red (microtubules), blue (nuclei), yellow (ER), each float32 in about 0..1."""
    u = geom.u
    n1 = geom.n + 1
    lv = child_rng(base, "levels")
    level_r = geom.lookup(np.exp(lv.normal(np.log(0.42), 0.25, n1)))
    level_b = geom.lookup(np.exp(lv.normal(np.log(0.55), 0.22, n1)))
    level_y = geom.lookup(np.exp(lv.normal(np.log(0.45), 0.25, n1)))
    red = level_r * microtubule_map(geom, child_rng(base, "mt"))
    yellow = level_y * er_map(geom, child_rng(base, "er"))
    nuc_map, _ = nucleoli(geom, child_rng(base, "nucleoli"))
    chrom = smooth_noise(child_rng(base, "chromatin"), geom.shape, 1.4 * u)
    mit = geom.lookup(geom.mitotic)
    blue = level_b * geom.nuc_soft * (0.78 + 0.12 * chrom) * (1 - 0.45 * nuc_map)
    blue = blue * (1 + 0.7 * mit * (1 + 0.3 * chrom))  # condensed chromatin is brighter
    return red, blue, yellow
