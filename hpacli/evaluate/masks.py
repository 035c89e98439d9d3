"""The competition's mask encoding: pycocotools RLE → zlib (level 9) → base64.

``encode_mask`` reproduces the reference recipe byte for byte; ``encode_label_image``
encodes every cell of a label image at once (one Fortran copy, not one per cell).
"""

from __future__ import annotations

import base64
import warnings
import zlib

import numpy as np
from pycocotools import mask as mask_util


def _pack(counts: bytes) -> str:
    return base64.b64encode(zlib.compress(counts, 9)).decode("ascii")


def encode_mask(mask: np.ndarray) -> str:
    """Encode one boolean ``H×W`` mask."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"a mask must be 2-D, got shape {mask.shape}")
    h, w = mask.shape
    rle = mask_util.encode(np.asfortranarray(mask.reshape(h, w, 1).astype(np.uint8)))[0]
    return _pack(rle["counts"])


def encode_label_image(labels: np.ndarray, ids=None) -> dict[int, str]:
    """Encode the masks of the cells of a label image: ``{cell id: encoded mask}``."""
    labels = np.asarray(labels)
    if ids is None:
        ids = np.unique(labels)
        ids = ids[ids != 0]
    if len(ids) == 0:
        return {}
    h, w = labels.shape
    stack = np.zeros((h, w, len(ids)), dtype=np.uint8, order="F")
    for k, i in enumerate(ids):
        stack[:, :, k] = labels == i
    rles = mask_util.encode(stack)
    return {int(i): _pack(r["counts"]) for i, r in zip(ids, rles)}


def rle_from_encoded(encoded: str, height: int, width: int) -> dict:
    """Turn an encoded mask into a pycocotools RLE ``{'size': [H, W], 'counts': bytes}``.

    Checks, without decoding to pixels, that the string is base64 + zlib + COCO RLE and
    that its runs cover exactly ``height * width`` pixels (pycocotools itself does not
    check that). Raises ValueError with a readable message.
    """
    if not isinstance(encoded, str | bytes) or len(encoded) == 0:
        raise ValueError("undecodable mask (empty)")
    try:
        counts = zlib.decompress(base64.b64decode(encoded, validate=True))
    except Exception as exc:
        raise ValueError(f"undecodable mask ({type(exc).__name__})") from None
    h, w = int(height), int(width)
    total = rle_total(counts)
    if total != h * w:
        raise ValueError(
            f"mask covers {total} pixels, expected {h * w} (= ImageWidth {w} x ImageHeight {h})"
        )
    return {"size": [h, w], "counts": counts}


def decode_mask(encoded: str, height: int, width: int) -> np.ndarray:
    """Decode an encoded mask to a boolean ``height×width`` array (raises ValueError)."""
    rle = rle_from_encoded(encoded, height, width)
    try:
        with warnings.catch_warnings():  # pycocotools' numpy-2 "copy keyword" DeprecationWarning
            warnings.simplefilter("ignore", DeprecationWarning)
            decoded = mask_util.decode(rle)
    except Exception as exc:
        raise ValueError(f"undecodable mask ({exc})") from None
    return decoded.astype(bool)


def rle_total(counts: bytes) -> int:
    """Sum of the run lengths of a compressed COCO RLE string (raises ValueError if malformed).

    The string is pycocotools' LEB128-like code: 5 data bits per character (offset 48),
    bit 0x20 = "more characters follow", bit 0x10 of the last character = negative;
    from the 4th run on, each value is a difference to the run two places before.
    Vectorised with numpy (no Python loop over characters).
    """
    arr = np.frombuffer(bytes(counts), dtype=np.uint8).astype(np.int64) - 48
    if arr.size == 0:
        return 0
    if arr.min() < 0 or arr.max() > 63:
        raise ValueError("undecodable mask (bad RLE character)")
    more = (arr & 0x20) != 0
    if more[-1]:
        raise ValueError("undecodable mask (truncated RLE)")
    ends = np.flatnonzero(~more)
    starts = np.concatenate(([0], ends[:-1] + 1))
    group = np.repeat(np.arange(len(ends)), ends - starts + 1)
    k = np.arange(arr.size) - starts[group]
    if k.max() > 11:
        raise ValueError("undecodable mask (RLE value too long)")
    x = np.add.reduceat((arr & 0x1F) << (5 * k), starts)
    negative = (arr[ends] & 0x10) != 0
    x = x - (negative.astype(np.int64) << (5 * (k[ends] + 1)))
    cnts = x.copy()
    if cnts.size > 3:  # cnts[m] = x[m] + cnts[m-2] for m > 2
        cnts[1::2] = np.cumsum(x[1::2])
        cnts[2::2] = np.cumsum(x[2::2])
    if cnts.min() < 0:
        raise ValueError("undecodable mask (negative run length)")
    return int(cnts.sum())
