"""The competition's mask encoding: pycocotools RLE → zlib (level 9) → base64.

``encode_mask`` reproduces the reference recipe byte for byte; ``encode_label_image``
encodes every cell of a label image at once (one Fortran copy, not one per cell).
"""

from __future__ import annotations

import base64
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


def decode_mask(encoded: str, height: int, width: int) -> np.ndarray:
    """Decode an encoded mask to a boolean ``height×width`` array (raises ValueError)."""
    try:
        counts = zlib.decompress(base64.b64decode(encoded, validate=True))
    except Exception as exc:
        raise ValueError(f"undecodable mask ({type(exc).__name__})") from None
    try:
        decoded = mask_util.decode({"size": [int(height), int(width)], "counts": counts})
    except Exception as exc:
        raise ValueError(f"undecodable mask ({exc})") from None
    if decoded.shape[:2] != (int(height), int(width)):
        raise ValueError("mask size does not match ImageWidth x ImageHeight")
    # pycocotools does not check that the runs add up to H*W
    total = _rle_total(counts)
    if total != int(height) * int(width):
        raise ValueError(f"mask has {total} pixels, expected {int(height) * int(width)} (= ImageWidth x ImageHeight)")
    return decoded.astype(bool)


def _rle_total(counts: bytes) -> int:
    """Sum of run lengths of a compressed COCO RLE string (LEB128-like, as pycocotools writes it)."""
    total = 0
    prev = [0, 0]
    i = 0
    m = 0
    s = counts
    while i < len(s):
        x = 0
        k = 0
        more = True
        while more:
            c = s[i] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            i += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if m > 2:
            x += prev[m % 2]
        prev[m % 2] = x
        total += x
        m += 1
    return total
