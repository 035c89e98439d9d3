"""Reading one HPA image: four grayscale channel PNGs, 8- or 16-bit, checked.

16-bit channels are scaled to 8 bits the way Kaggle users did (``value >> 8``, i.e.
``value // 256``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..classes import CHANNELS
from ..errors import InputError

MIN_SIZE = 16


def channel_paths(folder: Path, image_id: str, ext: str = "png") -> list[Path]:
    return [Path(folder) / f"{image_id}_{c}.{ext}" for c in CHANNELS]


def read_channel(path: Path) -> tuple[np.ndarray, int]:
    """One channel as a 2-D array and its bit depth (8 or 16). Raises InputError."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"missing channel file {path.name}")
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"unreadable or truncated image {path.name}: {exc}") from None
    if arr.ndim == 3:
        # an RGB(A) file holding a grayscale channel: accept only if all colour planes agree
        planes = arr[..., :3]
        if not (np.array_equal(planes[..., 0], planes[..., 1]) and np.array_equal(planes[..., 0], planes[..., 2])):
            raise InputError(f"{path.name} is a colour image ({mode}); expected one grayscale channel")
        arr = planes[..., 0]
    if arr.ndim != 2:
        raise InputError(f"{path.name} has shape {arr.shape}; expected a 2-D grayscale image")
    if arr.dtype == np.uint8:
        return arr, 8
    if arr.dtype in (np.uint16, np.int32, np.int16, np.uint32) or mode.startswith("I"):
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise InputError(f"{path.name} has values outside 0..65535")
        return arr.astype(np.uint16), 16
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255, 8
    raise InputError(f"{path.name} has pixel type {arr.dtype}; expected 8- or 16-bit grayscale")


def to_uint8(arr: np.ndarray, bit_depth: int) -> np.ndarray:
    if bit_depth == 16:
        return (arr >> 8).astype(np.uint8)
    return arr.astype(np.uint8, copy=False)


def inspect_rgby(paths: list[Path]) -> tuple[np.ndarray, int]:
    """Read and check the four channels; return uint8 ``[4, H, W]`` and the bit depth.

    Raises InputError naming the problem: a missing, unreadable or truncated channel,
    channels of different sizes, an image that is too small.
    """
    planes = []
    depths = []
    for p in paths:
        arr, depth = read_channel(p)
        planes.append(arr)
        depths.append(depth)
    shapes = {a.shape for a in planes}
    if len(shapes) != 1:
        sizes = ", ".join(f"{c}={a.shape[1]}x{a.shape[0]}" for c, a in zip(CHANNELS, planes))
        raise InputError(f"channels have different sizes ({sizes})")
    h, w = planes[0].shape
    if min(h, w) < MIN_SIZE:
        raise InputError(f"image is {w}x{h}; at least {MIN_SIZE}x{MIN_SIZE} is needed")
    depth = max(depths)
    out = np.stack([to_uint8(a, d) for a, d in zip(planes, depths)])
    return out, depth


def read_rgby(paths: list[Path]) -> np.ndarray:
    """uint8 RGBY ``[4, H, W]`` of one image (raises InputError on bad files)."""
    return inspect_rgby(paths)[0]


def resize_rgby(pixels: np.ndarray, size: int) -> np.ndarray:
    """Area-style downscale of uint8 ``[4, H, W]`` to ``[4, size, size]``."""
    if pixels.shape[1] == size and pixels.shape[2] == size:
        return pixels
    out = np.empty((pixels.shape[0], size, size), dtype=np.uint8)
    for c in range(pixels.shape[0]):
        im = Image.fromarray(pixels[c])
        out[c] = np.asarray(im.resize((size, size), Image.BILINEAR, reducing_gap=2.0))
    return out
