"""Reading one HPA image: four grayscale channel PNGs, 8- or 16-bit, checked.

16-bit channels are scaled to 8 bits the way Kaggle users did (``value >> 8``, i.e.
``value // 256``).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..classes import CHANNELS
from ..errors import InputError
from .ids import check_image_id

MIN_SIZE = 16
# Largest image decoded (pixels per channel): Pillow's own decompression-bomb limit
# (about 9459x9459); HPA images are at most a few thousand pixels square.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485


def channel_paths(folder: Path, image_id: str, ext: str = "png") -> list[Path]:
    """The four channel files of an image; the ID is checked first (no path escapes)."""
    check_image_id(image_id)
    return [Path(folder) / f"{image_id}_{c}.{ext}" for c in CHANNELS]


# Decoding modes a channel file may have. Palette and colour images are accepted only
# when they hold grey levels (see read_channel).
_GREY_MODES = {"1", "L", "I", "I;16", "I;16B", "I;16L", "I;16N"}
_COLOUR_MODES = {"P", "PA", "LA", "La", "RGB", "RGBA", "RGBa"}


def _opaque(alpha: np.ndarray) -> bool:
    return bool(alpha.size == 0 or alpha.min() == (65535 if alpha.dtype == np.uint16 else 255))


def _grey_from(im, path: Path) -> np.ndarray:
    """A grey plane from a palette / grey+alpha / RGB(A) image: refused unless every
    colour is a grey level and the image is fully opaque."""
    mode = im.mode
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in im.info
        im = im.convert("RGBA" if has_alpha else "RGB")  # palette indices -> the colours they stand for
    arr = np.asarray(im)
    if im.mode in ("LA", "La"):
        grey, alpha = arr[..., 0], arr[..., 1]
    else:
        grey, alpha = arr[..., 0], (arr[..., 3] if arr.shape[-1] == 4 else None)
        if not (np.array_equal(grey, arr[..., 1]) and np.array_equal(grey, arr[..., 2])):
            raise InputError(f"{path.name} is a colour image ({mode}); expected one grayscale channel")
    if alpha is not None and not _opaque(alpha):
        raise InputError(f"{path.name} has transparent pixels ({mode}); expected one opaque grayscale channel")
    return np.ascontiguousarray(grey)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_header_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk, without decoding; None when not a PNG."""
    try:
        with open(path, "rb") as f:
            head = f.read(24)
    except OSError as exc:
        raise InputError(f"cannot read {path.name}: {exc.strerror or exc}") from None
    if len(head) == 24 and head[:8] == PNG_SIGNATURE and head[12:16] == b"IHDR":
        return struct.unpack(">II", head[16:24])
    return None


def _check_pixels(path: Path, w: int, h: int) -> None:
    if w * h > MAX_PIXELS:
        raise InputError(
            f"{path.name} claims {w}x{h} pixels ({w * h / 1e6:.0f} Mpx) in its header, "
            f"more than the {MAX_PIXELS / 1e6:.0f} Mpx hpacli decodes"
        )


def read_channel(path: Path) -> tuple[np.ndarray, int]:
    """One channel as a 2-D array and its bit depth (8 or 16). Raises InputError.

    The file must really be a PNG (a JPEG or TIFF renamed ``.png`` is refused, naming
    what it is), claim at most :data:`MAX_PIXELS` pixels in its header (checked before
    decoding), and hold grey levels: palette images are mapped through their palette,
    grey+alpha and RGB(A) files are accepted when opaque and grey.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"missing channel file {path.name}")
    size = _png_header_size(path)
    if size is not None:
        _check_pixels(path, *size)  # before Pillow sees it: no decompression-bomb warning or error
    try:
        with Image.open(path) as im:
            if im.format != "PNG":
                raise InputError(
                    f"{path.name} is a {im.format or 'non-PNG'} file, not a PNG (renamed?); "
                    f"convert it to PNG (JPEG is lossy: its pixels differ from the original)"
                )
            _check_pixels(path, *im.size)
            im.load()
            mode = im.mode
            if mode in _GREY_MODES:
                arr = np.asarray(im)
            elif mode in _COLOUR_MODES:
                arr = _grey_from(im, path)
            else:
                raise InputError(f"{path.name} has image mode {mode}; expected one grayscale channel")
    except InputError:
        raise
    except Image.DecompressionBombError:
        raise InputError(f"{path.name} claims more than {MAX_PIXELS / 1e6:.0f} Mpx in its header; "
                         f"hpacli decodes at most that") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"unreadable or truncated image {path.name}: {exc}") from None
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
