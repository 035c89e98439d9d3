"""Near-duplicate images: a perceptual hash per channel and a pair search without O(N²) Python loops.

Hash: ``imagehash.phash`` (the 32×32 image's DCT, its 8×8 low-frequency corner compared
with its median) of the red, green and blue channels, each packed into one ``uint64``
(bit 63 = the hash's first bit, so ``int(str(imagehash), 16)`` is the same number).

Pairs: two images are duplicates when the Hamming distance is ``<= threshold`` in every
channel. Two searches give the same pairs:

* :func:`find_pairs_brute`: every pair, vectorised in row blocks (XOR + popcount on the
  first channel, the others only for the few survivors). O(N²) work but no Python loop
  per pair; the baseline.
* :func:`find_pairs_indexed`: multi-index hashing on the first channel. Its 64 bits are
  cut into ``m`` blocks; when two hashes differ in at most ``t`` bits, some block differs
  in at most ``t // m`` bits (pigeonhole; refined in :func:`block_radii`: with t = 12 and
  4 blocks, the first block within 3 bits or another within 2). For each block the
  hashes are bucketed by the block's value and only bucket pairs ``(u, u ^ f)`` with
  ``popcount(f)`` within the block's radius are expanded into candidates, which are then
  verified on all channels. ``m`` is chosen by a cost model (for 100,000 hashes and
  t = 12: four 16-bit blocks, so (697 + 3·137) / 65536 ≈ 1.7 % of all pairs are looked at).

Groups are the connected components of the pair graph, named by their smallest member.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import comb

import numpy as np

from ..summary import Summary

HASH_BITS = 64
DEFAULT_THRESHOLD = 12
HASH_CHANNELS = (0, 1, 2)  # red, green, blue of the RGBY order
CANDIDATE_BUDGET = 2_000_000  # candidate pairs verified at once by the indexed search
MAX_BLOCK_BITS = 22  # bucket lookup tables of 2**bits entries


# ---------------------------------------------------------------------------- hashing
def phash64(channel: np.ndarray) -> np.uint64:
    """pHash (imagehash, 8×8 of a 32×32 DCT) of one 2-D uint8 channel as a uint64."""
    import imagehash
    from PIL import Image

    arr = np.ascontiguousarray(channel)
    if arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    bits = imagehash.phash(Image.fromarray(arr, mode="L")).hash.reshape(-1)
    return np.frombuffer(np.packbits(bits).tobytes(), dtype=">u8")[0].astype(np.uint64)


def phash_rgb(pixels: np.ndarray) -> np.ndarray:
    """uint64 ``[3]``: the pHash of the red, green and blue channels of RGBY ``[4, H, W]``."""
    if pixels.ndim != 3 or pixels.shape[0] < 3:
        raise ValueError(f"expected RGBY pixels [4, H, W], got shape {pixels.shape}")
    return np.array([phash64(pixels[c]) for c in HASH_CHANNELS], dtype=np.uint64)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise Hamming distance of uint64 arrays (uint8)."""
    return np.bitwise_count(np.bitwise_xor(a, b))


# ---------------------------------------------------------------------------- searches
def _check(hashes: np.ndarray, threshold: int) -> np.ndarray:
    h = np.asarray(hashes)
    if h.ndim == 1:
        h = h[:, None]
    if h.ndim != 2 or h.shape[1] < 1:
        raise ValueError(f"hashes must be [N, C] uint64, got shape {h.shape}")
    if not 0 <= threshold < HASH_BITS:
        raise ValueError(f"threshold must be in 0..{HASH_BITS - 1}, got {threshold}")
    return np.ascontiguousarray(h.astype(np.uint64, copy=False))


def _verify(h: np.ndarray | list, i: np.ndarray, j: np.ndarray, threshold: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep candidate pairs within ``threshold`` in every channel; return i, j, distances [P, C]."""
    dists = []
    cols = h if isinstance(h, list) else [h[:, c] for c in range(h.shape[1])]
    for col in cols:
        d = hamming(col[i], col[j])
        keep = d <= threshold
        i, j, d = i[keep], j[keep], d[keep]
        dists = [x[keep] for x in dists] + [d]
    dist = np.stack(dists, axis=1) if dists else np.zeros((len(i), 0), np.uint8)
    return i, j, dist


def _finish(i_list, j_list, d_list, n_channels: int) -> tuple[np.ndarray, np.ndarray]:
    if not i_list:
        return np.zeros((0, 2), np.int64), np.zeros((0, n_channels), np.uint8)
    i = np.concatenate(i_list).astype(np.int64)
    j = np.concatenate(j_list).astype(np.int64)
    d = np.concatenate(d_list).astype(np.uint8)
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    n = int(hi.max()) + 1 if len(hi) else 1
    key = lo * n + hi
    _, first = np.unique(key, return_index=True)  # sorted by (lo, hi), each pair once
    return np.stack([lo[first], hi[first]], axis=1), d[first]


def find_pairs_brute(hashes: np.ndarray, threshold: int = DEFAULT_THRESHOLD, progress=None, task=None,
                     block_elems: int = 4_000_000) -> tuple[np.ndarray, np.ndarray]:
    """All pairs ``i < j`` within ``threshold`` in every channel, by comparing every pair
    (vectorised in row blocks). Returns ``pairs`` int64 ``[P, 2]`` sorted, ``dist`` uint8 ``[P, C]``."""
    h = _check(hashes, threshold)
    n = len(h)
    first = h[:, 0]
    out_i, out_j, out_d = [], [], []
    start = 0
    while start < n - 1:
        rows = max(1, min(n - start, block_elems // max(1, n - start)))
        stop = start + rows
        d0 = hamming(first[start:stop, None], first[None, start:])  # [rows, n - start]
        hit = d0 <= threshold
        # keep only the strict upper triangle (j > i)
        tri = np.arange(rows)[:, None] >= np.arange(n - start)[None, :]
        hit &= ~tri
        r, c = np.nonzero(hit)
        if len(r):
            i, j, d = _verify(h, r + start, c + start, threshold)
            out_i.append(i)
            out_j.append(j)
            out_d.append(d)
        if progress is not None and task is not None:
            progress.advance(task, rows)
        start = stop
    if progress is not None and task is not None and n:
        progress.update(task, completed=n)
    return _finish(out_i, out_j, out_d, h.shape[1])


def _block_layout(m: int) -> list[tuple[int, int]]:
    """(shift, bits) of m near-equal blocks covering 64 bits."""
    sizes = [HASH_BITS // m + (1 if k < HASH_BITS % m else 0) for k in range(m)]
    out, shift = [], HASH_BITS
    for b in sizes:
        shift -= b
        out.append((shift, b))
    return out


def _n_masks(bits: int, radius: int) -> int:
    return sum(comb(bits, k) for k in range(min(bits, radius) + 1)) if radius >= 0 else 0


def block_radii(m: int, threshold: int) -> list[int]:
    """Search radius per block. With ``threshold = m·r + a`` (0 <= a < m), two hashes within
    ``threshold`` agree to within ``r`` bits in one of the first ``a + 1`` blocks or within
    ``r - 1`` bits in one of the others (else the distance would be at least
    ``(a+1)(r+1) + (m-a-1)r = threshold + 1``). A radius of -1 means the block is not searched."""
    r, a = divmod(threshold, m)
    return [r if k <= a else r - 1 for k in range(m)]


def choose_blocks(n: int, threshold: int) -> int:
    """Number of index blocks minimising a simple cost model (probes + verified candidates)."""
    best_m, best_cost = 1, float("inf")
    for m in range(1, 17):
        cost = 0.0
        for (_, bits), radius in zip(_block_layout(m), block_radii(m, threshold)):
            if bits > MAX_BLOCK_BITS:
                cost = float("inf")
                break
            masks = _n_masks(bits, radius)
            cost += masks * n + 4.0 * (n * n / 2.0) * masks / 2**bits
        if cost < best_cost:
            best_m, best_cost = m, cost
    return best_m


def _masks(bits: int, radius: int) -> np.ndarray:
    values = np.arange(2**bits, dtype=np.int64)
    return values[np.bitwise_count(values) <= radius]


def _within_buckets(starts, counts, order):
    """Every pair of members inside each bucket: indices into the hash array."""
    n_pairs = counts * counts
    total = int(n_pairs.sum())
    if total == len(counts):  # all buckets hold one hash
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    which = np.repeat(np.arange(len(n_pairs)), n_pairs)
    local = np.arange(total, dtype=np.int64) - (np.cumsum(n_pairs) - n_pairs)[which]
    c = counts[which]
    ia, ib = local // c, local % c
    keep = ia < ib
    which, ia, ib = which[keep], ia[keep], ib[keep]
    return order[starts[which] + ia], order[starts[which] + ib]


def find_pairs_indexed(hashes: np.ndarray, threshold: int = DEFAULT_THRESHOLD, n_blocks: int | None = None,
                       progress=None, task=None) -> tuple[np.ndarray, np.ndarray]:
    """The same pairs as :func:`find_pairs_brute`, by multi-index hashing on the first channel."""
    h = _check(hashes, threshold)
    n = len(h)
    if n < 2:
        return _finish([], [], [], h.shape[1])
    m = n_blocks or choose_blocks(n, threshold)
    layout = _block_layout(m)
    if layout[0][1] > MAX_BLOCK_BITS or m > HASH_BITS:
        raise ValueError(f"n_blocks must be between {-(-HASH_BITS // MAX_BLOCK_BITS)} and {HASH_BITS}")
    cols = [np.ascontiguousarray(h[:, c]) for c in range(h.shape[1])]
    first = cols[0]
    out_i, out_j, out_d = [], [], []

    def keep(i, j):
        if len(i):
            i, j, d = _verify(cols, i, j, threshold)
            out_i.append(i)
            out_j.append(j)
            out_d.append(d)

    positions = np.arange(n, dtype=np.int64)
    for (shift, bits), radius in zip(layout, block_radii(m, threshold)):
        if radius < 0:
            if progress is not None and task is not None:
                progress.advance(task, 1)
            continue
        values = ((first >> np.uint64(shift)) & np.uint64(2**bits - 1)).astype(np.int64)
        order = np.argsort(values, kind="stable")
        sv = values[order]  # bucket value of each hash, in bucket order
        uniq, starts, counts = np.unique(sv, return_index=True, return_counts=True)
        count_of = np.zeros(2**bits, dtype=np.int64)
        start_of = np.zeros(2**bits, dtype=np.int64)
        count_of[uniq] = counts
        start_of[uniq] = starts
        keep(*_within_buckets(starts, counts, order))  # mask 0: same bucket
        masks = _masks(bits, radius)
        masks = masks[masks != 0]
        per_mask = max(1.0, n + (n * n / 2.0) / 2**bits)
        chunk = max(1, int(CANDIDATE_BUDGET / per_mask))
        for k in range(0, len(masks), chunk):
            f = masks[k : k + chunk]
            partner = sv[None, :] ^ f[:, None]  # [F, N]: the neighbouring bucket of each hash
            cnt = count_of[partner]
            sel = (partner > sv[None, :]) & (cnt > 0)  # each bucket pair once, from its lower bucket
            b = partner[sel]
            c = cnt[sel]
            q = np.broadcast_to(positions[None, :], partner.shape)[sel]
            total = int(c.sum())
            if total == 0:
                continue
            i_pos = np.repeat(q, c)
            j_pos = np.repeat(start_of[b] - (np.cumsum(c) - c), c) + np.arange(total, dtype=np.int64)
            keep(order[i_pos], order[j_pos])
        if progress is not None and task is not None:
            progress.advance(task, 1)
    return _finish(out_i, out_j, out_d, h.shape[1])


def find_pairs(hashes: np.ndarray, threshold: int = DEFAULT_THRESHOLD, method: str = "auto",
               progress=None) -> tuple[np.ndarray, np.ndarray]:
    """Duplicate pairs; ``method``: auto (index above 2,000 hashes), index, brute."""
    n = len(hashes)
    if method == "auto":
        method = "index" if n > 2000 else "brute"
    if method not in ("index", "brute"):
        raise ValueError(f"method must be auto, index or brute, not {method!r}")
    task = None
    if progress is not None:
        from ..progress import add_task

        if method == "index":
            task = add_task(progress, "pair search (index)", len(_block_layout(choose_blocks(n, threshold))),
                            unit="block")
        else:
            task = add_task(progress, "pair search (all pairs)", n, unit="row")
    if method == "index":
        return find_pairs_indexed(hashes, threshold, progress=progress, task=task)
    return find_pairs_brute(hashes, threshold, progress=progress, task=task)


# ---------------------------------------------------------------------------- groups
def connected_groups(n: int, pairs: np.ndarray) -> np.ndarray:
    """int64 ``[n]``: each item's group, named by the group's smallest index (singletons: their own)."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if n == 0:
        return np.zeros(0, np.int64)
    if len(pairs) == 0:
        return np.arange(n, dtype=np.int64)
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(pairs), np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    smallest = np.full(comp.max() + 1, n, dtype=np.int64)
    np.minimum.at(smallest, comp, np.arange(n, dtype=np.int64))
    return smallest[comp]


# ---------------------------------------------------------------------------- the stage
HASH_BLOCK = 256  # images hashed per resumable block


def _read_pixels(images, index: int, source: str) -> np.ndarray:
    return images.read_cache(index) if source == "cache" else images.read_image(index)


def run_dedup(
    store,
    *,
    threshold: int = DEFAULT_THRESHOLD,
    source: str = "auto",
    method: str = "auto",
    workers: int = 2,
    overwrite: bool = False,
    progress=None,
) -> DedupSummary:
    """Hash every image (resumable, in blocks), find duplicate pairs and groups, store them.

    ``source``: ``cache`` hashes the pixel cache (a downscale made by ingest; pHash resizes
    to 32×32 anyway, so a cache of 128 px or more gives nearly the same bits as the PNGs,
    at a fraction of the cost), ``png`` the full-resolution PNGs, ``auto`` the cache when
    the store has one with every image's row present (else the PNGs). Rows without a
    cache marker are never hashed: ``cache`` with such rows is refused. Test images are hashed too (train/test duplicates are reported).
    Returns a :class:`DedupSummary`.
    """
    from concurrent.futures import ThreadPoolExecutor

    from ..errors import HpaError, InputError
    from ..progress import NullProgress, add_task
    from ..store import begin_stage
    from ..store import dedup as sd

    store.require_writable()
    images = store.images
    n = images.n
    if n == 0:
        raise HpaError(f"the store {store.path} has no images; run `hpa ingest` first")
    if not 0 <= threshold < HASH_BITS:
        raise HpaError(f"--threshold must be between 0 and {HASH_BITS - 1}, got {threshold}")
    if method not in ("auto", "index", "brute"):
        raise HpaError(f"--method must be auto, index or brute, not {method!r}")
    cache_size = images.cache_size
    if source not in ("auto", "cache", "png"):
        raise HpaError(f"--source must be auto, cache or png, not {source!r}")
    n_uncached = int((~images.cache_present()).sum()) if cache_size else n
    if source == "auto":
        source = "cache" if cache_size and n_uncached == 0 else "png"
    if source == "cache" and not cache_size:
        raise HpaError("the store has no pixel cache; use --source png (or ingest with --cache-size)")
    if source == "cache" and n_uncached:
        raise HpaError(
            f"{n_uncached} of {n} images have no pixels in the store's cache; run `hpa ingest` on the dataset "
            f"again (it fills the cache), or use --source png"
        )
    cache_id = images.cache_id if source == "cache" else None
    if overwrite:
        sd.clear(store)
    params = {"threshold": threshold, "source": source, "cache_size": cache_size if source == "cache" else None,
              "method": method}
    progress = progress or NullProgress()
    with begin_stage(store, sd.GROUP, "dedup", params) as run:
        work = sd.prepare_hashes(store, n, HASH_BLOCK, source, cache_size if source == "cache" else None, cache_id)
        todo = work.todo()
        task = add_task(progress, "hash", sum(len(b) for b in todo), unit="img")
        problems: list[dict] = []
        ids = images.ids()

        def one(i: int):
            try:
                return phash_rgb(_read_pixels(images, i, source)), None
            except (InputError, OSError, ValueError) as exc:
                return None, {"ID": str(ids[i]), "problem": str(exc)}

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for block in todo:
                rows = np.zeros((len(block), len(HASH_CHANNELS)), np.uint64)
                ok = np.zeros(len(block), bool)
                for k, (h, problem) in enumerate(pool.map(one, range(block.start, block.stop))):
                    if problem is not None:
                        problems.append(problem)
                    else:
                        rows[k] = h
                        ok[k] = True
                    progress.advance(task)
                sd.write_hashes(store, block.start, rows, ok)
                work.mark_done(block)
        hashes, ok = sd.read_hashes(store)
        hashes, ok = hashes[:n], ok[:n]
        valid = np.flatnonzero(ok)
        pairs_v, dist = find_pairs(hashes[valid], threshold, method=method, progress=progress)
        pairs = valid[pairs_v] if len(pairs_v) else np.zeros((0, 2), np.int64)
        group = connected_groups(n, pairs)
        sd.write_dedup_result(store, group, pairs, dist, threshold)
        summary = dedup_summary(store, group, pairs)
        summary.source = f"cache ({cache_size}px)" if source == "cache" else "png"
        summary.n_unreadable = int((~ok).sum())
        summary.problems = problems[:1000]
        run.finish("done", **summary.as_dict())
    return summary


@dataclass
class DedupSummary(Summary):
    n_images: int = 0
    n_pairs: int = 0
    n_groups: int = 0
    n_images_in_groups: int = 0
    largest_group: int = 1
    train_test_pairs: int = 0
    cross_source_pairs: int = 0
    source: str = ""
    n_unreadable: int = 0
    problems: list = field(default_factory=list)


def dedup_summary(store, group: np.ndarray, pairs: np.ndarray) -> DedupSummary:
    df = store.images.df()
    n = len(group)
    sizes = np.bincount(group, minlength=n)
    multi = sizes[sizes > 1]
    split = df["split"].to_numpy()[:n]
    source = df["source"].to_numpy()[:n]
    out = DedupSummary(n_images=int(n), n_pairs=int(len(pairs)), n_groups=int(len(multi)),
                       n_images_in_groups=int(multi.sum()), largest_group=int(multi.max()) if len(multi) else 1)
    if len(pairs):
        a, b = pairs[:, 0], pairs[:, 1]
        out.train_test_pairs = int(((split[a] == "test") != (split[b] == "test")).sum())
        out.cross_source_pairs = int((source[a] != source[b]).sum())
    return out


def pairs_frame(store, pairs: np.ndarray, distances: np.ndarray, group: np.ndarray):
    """The pairs as a table: ID1, ID2, d_red, d_green, d_blue, split1, split2, group."""
    import pandas as pd

    df = store.images.df()
    ids = df["ID"].to_numpy()
    split = df["split"].to_numpy()
    a = pairs[:, 0] if len(pairs) else np.zeros(0, np.int64)
    b = pairs[:, 1] if len(pairs) else np.zeros(0, np.int64)
    return pd.DataFrame({
        "ID1": ids[a], "ID2": ids[b],
        "d_red": distances[:, 0], "d_green": distances[:, 1], "d_blue": distances[:, 2],
        "split1": split[a], "split2": split[b], "group": ids[group[a]] if len(a) else np.zeros(0, str),
    })


def _rgb_thumb(store, index: int, size: int) -> np.ndarray:
    from PIL import Image

    images = store.images
    px = images.try_read_cache(index)
    if px is None:
        px = images.read_image(index)
    rgb = np.ascontiguousarray(np.transpose(px[:3], (1, 2, 0)))
    return np.asarray(Image.fromarray(rgb, mode="RGB").resize((size, size), Image.BILINEAR))


def pairs_png(store, pairs: np.ndarray, distances: np.ndarray, path, max_pairs: int = 8, size: int = 256) -> int:
    """A PNG of up to ``max_pairs`` pairs side by side (RGB composites), chosen across the
    range of distances (identical to borderline). Returns the number of pairs drawn."""
    from PIL import Image, ImageDraw

    if len(pairs) == 0:
        return 0
    total = distances.astype(int).sum(axis=1)
    order = np.argsort(total, kind="stable")
    pick = order[np.unique(np.linspace(0, len(order) - 1, min(max_pairs, len(order))).round().astype(int))]
    ids = store.images.ids()
    pad, text_h = 8, 18
    canvas = Image.new("RGB", (2 * size + 3 * pad, len(pick) * (size + text_h + pad) + pad), (32, 32, 32))
    draw = ImageDraw.Draw(canvas)
    for row, p in enumerate(pick):
        y = pad + row * (size + text_h + pad)
        i, j = int(pairs[p, 0]), int(pairs[p, 1])
        d = distances[p]
        draw.text((pad, y), f"{ids[i]}  vs  {ids[j]}   d(R,G,B) = {int(d[0])}, {int(d[1])}, {int(d[2])}",
                  fill=(230, 230, 230))
        for col, k in enumerate((i, j)):
            try:
                thumb = _rgb_thumb(store, k, size)
            except Exception:  # an unreadable image: leave its tile empty
                continue
            canvas.paste(Image.fromarray(thumb), (pad + col * (size + pad), y + text_h))
    canvas.save(str(path))
    return len(pick)
