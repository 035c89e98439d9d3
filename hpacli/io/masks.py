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
    counts = unpack_counts(encoded)
    h, w = int(height), int(width)
    total = rle_total(counts)
    if total != h * w:
        raise ValueError(size_message(total, h, w))
    return {"size": [h, w], "counts": counts}


def unpack_counts(encoded: str) -> bytes:
    """base64 → zlib → the RLE ``counts`` bytes (raises ValueError; runs not checked)."""
    if not isinstance(encoded, str | bytes) or len(encoded) == 0:
        raise ValueError("undecodable mask (empty)")
    try:
        return zlib.decompress(base64.b64decode(encoded, validate=True))
    except Exception as exc:
        raise ValueError(f"undecodable mask ({type(exc).__name__})") from None


def size_message(total: int, h: int, w: int) -> str:
    return f"mask covers {total} pixels, expected {h * w} (= ImageWidth {w} x ImageHeight {h})"


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
    """Sum of the run lengths of a compressed COCO RLE string (raises ValueError if malformed)."""
    return int(rle_totals([counts])[0])


def rle_totals(counts_list: list[bytes]) -> np.ndarray:
    """Sums of the run lengths of many compressed COCO RLE strings at once (int64 array).

    The strings are pycocotools' LEB128-like code: 5 data bits per character (offset 48),
    bit 0x20 = "more characters follow", bit 0x10 of a value's last character = negative;
    from the 3rd run on (index m > 2), each value is a difference to the run two places
    before. Vectorised over all strings together (no Python loop over characters or runs).
    Raises ValueError when any string is malformed or decodes to a negative run.
    """
    n = len(counts_list)
    lens = np.fromiter((len(c) for c in counts_list), dtype=np.int64, count=n)
    totals = np.zeros(n, dtype=np.int64)
    if n == 0 or lens.sum() == 0:
        return totals
    arr = np.frombuffer(b"".join(bytes(c) for c in counts_list), dtype=np.uint8).astype(np.int64) - 48
    if arr.min() < 0 or arr.max() > 63:
        raise ValueError("undecodable mask (bad RLE character)")
    more = (arr & 0x20) != 0
    string_end = np.cumsum(lens)
    if more[string_end[lens > 0] - 1].any():
        raise ValueError("undecodable mask (truncated RLE)")
    ends = np.flatnonzero(~more)  # last character of each value
    starts = np.concatenate(([0], ends[:-1] + 1))
    length = ends - starts + 1
    if length.max() > 12:
        raise ValueError("undecodable mask (RLE value too long)")
    k = np.arange(arr.size) - np.repeat(starts, length)
    x = np.add.reduceat((arr & 0x1F) << (5 * k), starts)
    x -= ((arr[ends] & 0x10) != 0).astype(np.int64) << (5 * length)  # sign extension
    # which string each value belongs to, and its index m inside that string
    sid = np.searchsorted(string_end, ends, side="right")
    m = np.arange(len(x)) - np.searchsorted(sid, sid)
    # cnts[m] = x[m] + cnts[m-2] for m > 2: running sums along two chains per string,
    # odd m (from m=1) and even m (from m=2); m=0 stands alone. Global cumulative sums
    # minus each string's offset, no sorting.
    first = np.searchsorted(sid, np.arange(n))  # first value of each string (if any)
    first = np.minimum(first, len(x) - 1)
    odd = (m % 2) == 1
    x_odd = np.where(odd, x, 0)
    x_even = np.where(~odd & (m >= 2), x, 0)
    c_odd = np.cumsum(x_odd)
    c_even = np.cumsum(x_even)
    c_odd -= (c_odd[first] - x_odd[first])[sid]
    c_even -= (c_even[first] - x_even[first])[sid]
    cnts = np.where(m == 0, x, np.where(odd, c_odd, c_even))
    if cnts.min() < 0:
        raise ValueError("undecodable mask (negative run length)")
    totals += np.bincount(sid, weights=cnts, minlength=n).round().astype(np.int64)  # exact below 2**53
    return totals
