"""Views of square images: the one place for flips, rotations and test-time views.

Every function works on numpy arrays and torch tensors alike (the last two axes are H, W).

* :func:`dihedral` — the 8 flips/rotations: ``d % 4`` counter-clockwise quarter turns, then
  (for ``d >= 4``) a horizontal flip; ``d = 0`` is the identity. :func:`random_dihedral`
  draws one for training augmentation.
* Named views (:data:`ALL_VIEWS`, test-time augmentation): the dihedral names (:data:`VIEWS`: ``id``,
  ``hflip``, ``vflip``, ``rot90``, ``rot180``, ``rot270``, ``transpose``,
  ``antitranspose``), exact, and :func:`invert_view` undoes them exactly; ``zoomin`` /
  ``zoomout``, the centre magnified by 1.125 / shrunk by 1/1.125 into a zero border
  (bilinear), undone up to interpolation (and the cut border for ``zoomin``); ``shift``,
  moved by S/16 pixels down and right with zero fill, undone exactly except for the
  S/16-wide strips that left the frame.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

N_DIHEDRAL = 8

# test-time views by name: the dihedral elements
VIEWS: dict[str, int] = {
    "id": 0,
    "rot90": 1,  # counter-clockwise, as np.rot90 / torch.rot90
    "rot180": 2,
    "rot270": 3,
    "hflip": 4,  # mirror left-right (reverse columns)
    "antitranspose": 5,
    "vflip": 6,  # mirror top-bottom (reverse rows)
    "transpose": 7,
}
ZOOM = 1.125
SHIFT_FRACTION = 1 / 16
SCALE_SHIFT = ("zoomin", "zoomout", "shift")
ALL_VIEWS: tuple[str, ...] = (*VIEWS, *SCALE_SHIFT)
PSEUDOLABEL_VIEWS: tuple[str, ...] = ("id", "vflip", "hflip", "rot90")
DEFAULT_TTA: tuple[str, ...] = ("id", "hflip", "vflip", "rot90")
# training augmentation draws k in 0..7 from the item's seed; this order of the group keeps
# every seed's transform what it was (transpose, row flip, column flip bits)
_AUGMENT_ORDER = (0, 6, 4, 2, 7, 1, 3, 5)


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def _rot90(x, k: int):
    if _is_torch(x):
        import torch

        return torch.rot90(x, k, dims=(-2, -1))
    return np.rot90(x, k, axes=(-2, -1))


def _flip(x, axis: int):
    if _is_torch(x):
        return x.flip(axis)
    return np.flip(x, axis=axis)


def dihedral(x, d: int):
    """One of the 8 flips/rotations of the last two axes (see the module doc)."""
    d = int(d) % N_DIHEDRAL
    y = _rot90(x, d % 4) if d % 4 else x
    return _flip(y, -1) if d >= 4 else y


def random_dihedral(x, rng: np.random.Generator):
    """A random one of the 8 (training augmentation), contiguous."""
    y = dihedral(x, _AUGMENT_ORDER[int(rng.integers(N_DIHEDRAL))])
    return y.contiguous() if _is_torch(y) else np.ascontiguousarray(y)


def check_views(views: Sequence[str] | str, what: str = "view") -> tuple[str, ...]:
    """Views by name (a list, or one comma-separated string), each known and listed once;
    ``what`` names them in the error (``view``: pseudolabel's --views)."""
    from ..errors import HpaError

    if isinstance(views, str):
        views = [v.strip() for v in views.split(",") if v.strip()]
    views = tuple(views)
    bad = [v for v in views if v not in ALL_VIEWS]
    if bad or not views:
        raise HpaError(f"unknown {what}(s) {bad or '(none)'}; choose from {', '.join(ALL_VIEWS)}")
    if len(set(views)) != len(views):
        raise HpaError(f"{what}s listed twice: {', '.join(views)}")
    return views


def check_tta(views: Sequence[str] | str) -> tuple[str, ...]:
    """:func:`check_views` for predict's ``--tta``."""
    return check_views(views, "test-time view")


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
    if name in VIEWS:
        return dihedral(x, VIEWS[name])
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
    if name in VIEWS:
        d = VIEWS[name]
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
