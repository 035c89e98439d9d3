"""Test-time views by name: the 8 flips/rotations of :mod:`hpacli.data.crops` plus
scale and shift views.

A view maps a batch ``[B, C, S, S]`` (torch or numpy) to a batch of the same shape:

* dihedral names (``id``, ``hflip``, ``vflip``, ``rot90``, ``rot180``, ``rot270``,
  ``transpose``, ``antitranspose``): exact, :func:`invert_view` undoes them exactly;
* ``zoomin`` / ``zoomout``: the centre magnified by 1.125 / shrunk by 1/1.125 into a
  zero border (bilinear), undone up to interpolation (and the cut border for ``zoomin``);
* ``shift``: moved by S/16 pixels down and right, zero fill; undone exactly except for
  the S/16-wide strips that left the frame.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..data.crops import VIEWS as DIHEDRAL
from ..data.crops import dihedral

ZOOM = 1.125
SHIFT_FRACTION = 1 / 16
SCALE_SHIFT = ("zoomin", "zoomout", "shift")
ALL_VIEWS: tuple[str, ...] = (*DIHEDRAL, *SCALE_SHIFT)
DEFAULT_TTA: tuple[str, ...] = ("id", "hflip", "vflip", "rot90")


def check_tta(views: Sequence[str] | str) -> tuple[str, ...]:
    from ..errors import HpaError

    if isinstance(views, str):
        views = [v.strip() for v in views.split(",") if v.strip()]
    views = tuple(views)
    bad = [v for v in views if v not in ALL_VIEWS]
    if bad or not views:
        raise HpaError(f"unknown test-time view(s) {bad or '(none)'}; choose from {', '.join(ALL_VIEWS)}")
    if len(set(views)) != len(views):
        raise HpaError(f"test-time views listed twice: {', '.join(views)}")
    return views


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def _shift(x, dy: int, dx: int):
    """Move content by (dy, dx) pixels (positive: down/right), zero fill."""
    out = x.clone() if _is_torch(x) else np.array(x, copy=True)
    out[..., :, :] = 0
    h, w = x.shape[-2:]
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[..., yd, xd] = x[..., ys, xs]
    return out


def _zoom(x, factor: float):
    """Scale the content about the centre by ``factor`` (>1 magnifies and cuts the border,
    <1 shrinks into a zero border); same output size."""
    import torch
    import torch.nn.functional as F

    is_t = _is_torch(x)
    t = x if is_t else torch.from_numpy(np.ascontiguousarray(x))
    dtype = t.dtype
    shape = t.shape
    t4 = t.reshape(-1, 1, *shape[-2:]).float() if t.ndim != 4 else t.float()
    s = shape[-1]
    inner = max(1, int(round(s * factor)))
    y = F.interpolate(t4, size=(inner, inner), mode="bilinear", align_corners=False, antialias=factor < 1)
    if inner >= s:
        a = (inner - s) // 2
        y = y[..., a:a + s, a:a + s]
    else:
        a = (s - inner) // 2
        y = F.pad(y, (a, s - inner - a, a, s - inner - a))
    y = y.reshape(shape) if t.ndim != 4 else y
    if not dtype.is_floating_point:
        y = y.round().clamp(0, 255)
    y = y.to(dtype)
    return y if is_t else y.numpy()


def apply_view(x, name: str):
    """The named view of the last two axes of ``x`` (square)."""
    if name in DIHEDRAL:
        return dihedral(x, DIHEDRAL[name])
    s = int(x.shape[-1])
    if name == "zoomin":
        return _zoom(x, ZOOM)
    if name == "zoomout":
        return _zoom(x, 1 / ZOOM)
    if name == "shift":
        d = max(1, int(round(s * SHIFT_FRACTION)))
        return _shift(x, d, d)
    raise KeyError(name)


def invert_view(x, name: str):
    """Undo :func:`apply_view` (exact for the dihedral views; see the module doc)."""
    if name in DIHEDRAL:
        d = DIHEDRAL[name]
        return dihedral(x, d if d >= 4 else (4 - d) % 4)  # reflections are their own inverse
    s = int(x.shape[-1])
    if name == "zoomin":
        return _zoom(x, 1 / ZOOM)
    if name == "zoomout":
        return _zoom(x, ZOOM)
    if name == "shift":
        d = max(1, int(round(s * SHIFT_FRACTION)))
        return _shift(x, -d, -d)
    raise KeyError(name)
