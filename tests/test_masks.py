"""The mask encoding must reproduce the competition's recipe byte for byte and decode back."""

from __future__ import annotations

import base64
import zlib

import numpy as np
import pytest
from pycocotools import mask as mask_util

from hpacli.io.masks import (
    decode_mask,
    encode_label_image,
    encode_mask,
    rle_from_encoded,
    rle_total,
    rle_totals,
)

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _reference_encode(mask: np.ndarray) -> str:
    """The recipe in the facts file, written out step by step."""
    h, w = mask.shape
    rle = mask_util.encode(np.asfortranarray(mask.reshape(h, w, 1).astype(np.uint8)))[0]
    return base64.b64encode(zlib.compress(rle["counts"], 9)).decode()


def _reference_decode(encoded: str, h: int, w: int) -> np.ndarray:
    counts = zlib.decompress(base64.b64decode(encoded))
    return mask_util.decode({"size": [h, w], "counts": counts}).astype(bool)


def _random_masks(rng, n):
    for i in range(n):
        h, w = (int(x) for x in rng.integers(1, 90, size=2))
        kind = i % 4
        if kind == 0:  # noise of random density
            m = rng.random((h, w)) < rng.random()
        elif kind == 1:  # a rectangle (long runs, multi-character RLE values)
            m = np.zeros((h, w), bool)
            r0, c0 = rng.integers(0, h), rng.integers(0, w)
            m[r0 : r0 + rng.integers(1, h + 1), c0 : c0 + rng.integers(1, w + 1)] = True
        elif kind == 2:
            m = np.zeros((h, w), bool)
        else:
            m = np.ones((h, w), bool)
        yield m


def test_encode_matches_reference_and_round_trips():
    rng = np.random.default_rng(1)
    for m in _random_masks(rng, 200):
        enc = encode_mask(m)
        assert enc == _reference_encode(m)
        assert base64.b64decode(enc)[:2] == b"\x78\xda"  # zlib header of level 9 ("eN...")
        assert np.array_equal(_reference_decode(enc, *m.shape), m)
        assert np.array_equal(decode_mask(enc, *m.shape), m)


def test_big_mask_round_trip():
    m = np.zeros((2048, 2048), bool)
    yy, xx = np.mgrid[:2048, :2048]
    m[(yy - 900) ** 2 + (xx - 1200) ** 2 < 300**2] = True
    enc = encode_mask(m)
    assert np.array_equal(_reference_decode(enc, 2048, 2048), m)
    assert rle_from_encoded(enc, 2048, 2048)["size"] == [2048, 2048]


def test_encode_label_image_equals_per_cell_encoding():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 6, size=(40, 30)).astype(np.int32)
    labels[labels == 3] = 0
    enc = encode_label_image(labels)
    assert sorted(enc) == [1, 2, 4, 5]
    for i, e in enc.items():
        assert e == encode_mask(labels == i)
    assert encode_label_image(np.zeros((5, 5), np.int32)) == {}
    # explicit ids keep their order; an absent id encodes an empty mask
    enc2 = encode_label_image(labels, [5, 9])
    assert list(enc2) == [5, 9] and not decode_mask(enc2[9], 40, 30).any()


def _python_rle_total(counts: bytes) -> int:
    """Straightforward decoding of the compressed RLE string (as pycocotools' rleFrString)."""
    cnts, i = [], 0
    while i < len(counts):
        x, k, more = 0, 0, True
        while more:
            c = counts[i] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            i += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(cnts) > 2:
            x += cnts[-2]
        cnts.append(x)
    return sum(cnts)


def test_rle_total_matches_python_decoding():
    rng = np.random.default_rng(3)
    for m in _random_masks(rng, 120):
        counts = mask_util.encode(np.asfortranarray(m[:, :, None].astype(np.uint8)))[0]["counts"]
        assert rle_total(counts) == _python_rle_total(counts) == m.size


def test_rle_totals_of_many_strings_at_once():
    rng = np.random.default_rng(4)
    masks = list(_random_masks(rng, 60))
    counts = [mask_util.encode(np.asfortranarray(m[:, :, None].astype(np.uint8)))[0]["counts"] for m in masks]
    counts.insert(7, b"")  # an empty string has no runs
    expected = [m.size for m in masks]
    expected.insert(7, 0)
    assert rle_totals(counts).tolist() == expected
    assert rle_totals([]).tolist() == []
    with pytest.raises(ValueError, match="truncated"):
        rle_totals([counts[0], b"P", counts[1]])


def test_decode_rejects_bad_strings_and_wrong_sizes():
    m = np.zeros((10, 12), bool)
    m[2:5, 3:9] = True
    enc = encode_mask(m)
    with pytest.raises(ValueError, match="expected 130"):
        decode_mask(enc, 10, 13)
    with pytest.raises(ValueError, match="expected 110"):
        decode_mask(enc, 11, 10)
    with pytest.raises(ValueError, match="undecodable"):
        decode_mask("not base64 !!", 10, 12)
    with pytest.raises(ValueError, match="undecodable"):
        decode_mask(base64.b64encode(b"no zlib here").decode(), 10, 12)
    with pytest.raises(ValueError, match="undecodable"):  # zlib ok, RLE characters out of range
        decode_mask(base64.b64encode(zlib.compress(b"\x01\x02")).decode(), 10, 12)
    with pytest.raises(ValueError, match="truncated"):
        rle_total(b"P")  # 'P' - 48 = 32: "more follows", but nothing does
    with pytest.raises(ValueError, match="undecodable"):
        decode_mask("", 10, 12)
