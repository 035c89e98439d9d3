"""Duplicate search results.

Layout (group ``dedup``, provenance of the ``dedup`` stage):
``hashes`` uint64 ``[N, 3]``: pHash of the red, green and blue channel of each image
(attrs: ``source`` = cache | png, ``cache_size``, ``cache_id`` of the cache hashed); ``ok`` bool ``[N]``: the image could be
read and hashed; ``_done``: BlockWork markers of the hashing.
Written at the end of each run (replaced as a whole): ``group`` int64 ``[N]`` (the
duplicate group of each image, named by its smallest member's row; an image without
duplicates is its own group), ``pairs`` int64 ``[P, 2]`` (rows i < j) and ``distances``
uint8 ``[P, 3]`` (Hamming distance per channel). The group's attrs hold ``threshold`` and
``n_images`` (images covered by ``group``).
"""

from __future__ import annotations

import numpy as np

from ..errors import StoreError

GROUP = "dedup"
HINT = "run `hpa dedup` first"
N_HASH_CHANNELS = 3


def has_hashes(store) -> bool:
    return store.has(f"{GROUP}/hashes")


def clear(store) -> None:
    """Delete every duplicate-search result (``hpa dedup --overwrite``)."""
    store.delete(GROUP)


def prepare_hashes(store, n: int, block: int, source: str, cache_size: int | None,
                   cache_id: str | None = None):
    """Open (or create) the hash arrays for ``n`` images; returns the hashing's BlockWork. Hashes made from another source
    (cache vs png, another cache size, another cache: ``cache_id``) are discarded. If the
    table grew since the last run, the block that held the old last image is hashed again
    (it was only partly filled)."""
    from .work import BlockWork

    key = f"{GROUP}/hashes"
    if store.has(key):
        attrs = store.attrs(key)
        same = attrs.get("source") == source and attrs.get("cache_size") == cache_size
        same = same and attrs.get("cache_id") == cache_id
        same = same and int(attrs.get("block", -1)) == block
        if not same:
            for name in ("hashes", "ok", "_done"):
                store.delete(f"{GROUP}/{name}")
    old_n = int(store.attrs(key).get("n_images", 0)) if store.has(key) else 0
    store.ensure_array(
        key, (n, N_HASH_CHANNELS), "uint64", (block, N_HASH_CHANNELS), encoding="phash64-rgb",
        attrs={"source": source, "cache_size": cache_size, "cache_id": cache_id, "block": block,
               "hash": "imagehash.phash: 8x8 low frequencies of a 32x32 DCT, bit 63 first",
               "channels": ["red", "green", "blue"]},
        coverage="done",
    )
    store.ensure_array(f"{GROUP}/ok", (n,), "bool", (block,), encoding="bool-column", fill_value=False,
                       coverage="done")
    work = BlockWork(store, GROUP, n, block)
    if 0 < old_n < n and old_n % block:
        store.array(f"{GROUP}/_done")[old_n // block] = False
    if old_n != n:
        store.update_attrs(key, {"n_images": int(n)})
    return work


def write_hashes(store, start: int, hashes: np.ndarray, ok: np.ndarray) -> None:
    """Hashes (uint64 ``[k, 3]``) and read-ok flags of images ``start : start + k`` (a block)."""
    stop = start + len(hashes)
    store.array(f"{GROUP}/hashes")[start:stop] = np.asarray(hashes, dtype=np.uint64)
    store.array(f"{GROUP}/ok")[start:stop] = np.asarray(ok, dtype=bool)


def read_hashes(store) -> tuple[np.ndarray, np.ndarray]:
    """(hashes uint64 ``[N, 3]``, ok bool ``[N]``) of the images hashed so far."""
    if not has_hashes(store):
        raise StoreError(f"the store {store.path} has no image hashes; {HINT}")
    n = int(store.attrs(f"{GROUP}/hashes").get("n_images", 0))
    for name in ("hashes", "ok"):  # hashes of done blocks never read back as zeros
        store.require_rows(f"{GROUP}/{name}")
    return (np.asarray(store.array(f"{GROUP}/hashes")[:n]).astype(np.uint64),
            np.asarray(store.array(f"{GROUP}/ok")[:n]).astype(bool))


def write_dedup_result(store, group: np.ndarray, pairs: np.ndarray, distances: np.ndarray, threshold: int) -> None:
    group = np.asarray(group, dtype=np.int64)
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    distances = np.asarray(distances, dtype=np.uint8).reshape(-1, N_HASH_CHANNELS)
    n, p = len(group), len(pairs)
    arr = store.create_array(f"{GROUP}/group", (n,), "int64", (65536,), encoding="duplicate-group-min-row",
                             fill_value=-1, overwrite=True, coverage="all")
    if n:
        arr[:] = group
    arr = store.create_array(f"{GROUP}/pairs", (p, 2), "int64", (65536, 2), encoding="duplicate-pairs",
                             overwrite=True, coverage="all")
    if p:
        arr[:] = pairs
    arr = store.create_array(f"{GROUP}/distances", (p, N_HASH_CHANNELS), "uint8", (65536, N_HASH_CHANNELS),
                             encoding="hamming-distance-rgb", overwrite=True, coverage="all")
    if p:
        arr[:] = distances
    store.update_attrs(GROUP, {"threshold": int(threshold), "n_images": int(n), "n_pairs": int(p)})


def has_groups(store) -> bool:
    return store.has(f"{GROUP}/group")


def read_groups(store, require_all: bool = True) -> np.ndarray:
    """int64 ``[N]`` duplicate group per image row. With ``require_all``, an error when images
    were ingested after the last dedup (their duplicates are unknown); otherwise those
    images are their own group."""
    if not has_groups(store):
        raise StoreError(f"the store {store.path} has no duplicate groups; {HINT}")
    store.require_rows(f"{GROUP}/group")
    group = np.asarray(store.array(f"{GROUP}/group")[:]).astype(np.int64)
    n = store.images.n
    if len(group) < n:
        if require_all:
            raise StoreError(
                f"{n - len(group)} image(s) were ingested after the last `hpa dedup`; run `hpa dedup` again"
            )
        group = np.concatenate([group, np.arange(len(group), n, dtype=np.int64)])
    return group[:n]


def read_pairs(store) -> tuple[np.ndarray, np.ndarray]:
    """(pairs int64 ``[P, 2]``, distances uint8 ``[P, 3]``)."""
    if not has_groups(store):
        raise StoreError(f"the store {store.path} has no duplicate pairs; {HINT}")
    return (np.asarray(store.array(f"{GROUP}/pairs")[:]).astype(np.int64).reshape(-1, 2),
            np.asarray(store.array(f"{GROUP}/distances")[:]).astype(np.uint8).reshape(-1, N_HASH_CHANNELS))


def summary_section(store):
    """``hpa info`` section: duplicates, fold sets and obvious negatives, when present."""
    rows = []
    if has_groups(store):
        attrs = store.attrs(GROUP)
        group = np.asarray(store.array(f"{GROUP}/group")[:])
        sizes = np.bincount(group, minlength=len(group)) if len(group) else np.zeros(0, int)
        rows.append({"what": "duplicates", "value": f"{int(attrs.get('n_pairs', 0)):,} pairs, "
                     f"{int((sizes > 1).sum()):,} groups (distance <= {attrs.get('threshold')}, "
                     f"{int(attrs.get('n_images', 0)):,} images hashed)"})
    from .folds import fold_params, image_folds_key, list_fold_sets

    for name in list_fold_sets(store, "images"):
        p = fold_params(store, image_folds_key(name))
        rows.append({"what": f"image folds {name!r}", "value": f"{p.get('n_splits')} folds, seed {p.get('seed')}, "
                     f"duplicates {p.get('duplicates')}, negatives {p.get('negatives')}"})
    for name in list_fold_sets(store, "cells"):
        p = fold_params(store, f"folds/cells/{name}")
        rows.append({"what": f"cell folds {name!r}", "value": f"{p.get('n_splits')} folds, seed {p.get('seed')}"})
    if store.has("negatives/image_flag"):
        summ = (store.attrs("negatives").get("provenance") or {}).get("summary") or {}
        rows.append({"what": "obvious negatives", "value": f"{summ.get('flagged_images', '?')} of "
                     f"{summ.get('negative_images', '?')} Negative images flagged "
                     f"(threshold {store.attrs('negatives').get('threshold')})"})
    return ("preprocessing", rows) if rows else None
