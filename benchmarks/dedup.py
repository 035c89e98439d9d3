"""Duplicate pair search: multi-index hashing vs the vectorised all-pairs baseline, same run.

    python benchmarks/dedup.py [--n 100000] [--dups 2000] [--threshold 12] [--seed 0]

Random uint64 hashes for R, G, B; ``--dups`` planted copies, half within the threshold in
every channel and half just past it in one channel. Both searches must return the same
pairs (checked); the script prints both times and their ratio.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from hpacli.prep.dedup import _block_layout, choose_blocks, find_pairs_brute, find_pairs_indexed


def planted_hashes(n: int, n_dups: int, threshold: int, seed: int) -> tuple[np.ndarray, int]:
    rng = np.random.default_rng(seed)
    h = rng.integers(0, 2**64, size=(n, 3), dtype=np.uint64, endpoint=False)
    src = rng.choice(n, n_dups, replace=False)
    dst = rng.choice(n, n_dups, replace=False)
    inside = 0
    bit = np.uint64(1) << np.arange(64, dtype=np.uint64)
    for k, (s, t) in enumerate(zip(src, dst)):
        if s == t:
            continue
        v = h[s].copy()
        outside = rng.integers(0, 3) if k % 2 else -1
        inside += outside < 0
        for c in range(3):
            flips = rng.integers(threshold + 1, threshold + 4) if c == outside else rng.integers(0, threshold + 1)
            for b in rng.choice(64, flips, replace=False):
                v[c] ^= bit[b]
        h[t] = v
    return h, inside


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dups", type=int, default=2_000)
    ap.add_argument("--threshold", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    h, inside = planted_hashes(args.n, args.dups, args.threshold, args.seed)
    m = choose_blocks(args.n, args.threshold)
    bits = [b for _, b in _block_layout(m)]
    print(f"{args.n:,} hashes x 3 channels, {args.dups:,} planted copies ({inside:,} within the threshold), "
          f"threshold {args.threshold}")
    print(f"index: {m} blocks of {bits} bits, radius {args.threshold // m} per block")

    t = time.perf_counter()
    p_idx, d_idx = find_pairs_indexed(h, args.threshold)
    t_idx = time.perf_counter() - t
    print(f"indexed search    {t_idx:8.2f} s   {len(p_idx):,} pairs")

    t = time.perf_counter()
    p_bf, d_bf = find_pairs_brute(h, args.threshold)
    t_bf = time.perf_counter() - t
    print(f"brute force       {t_bf:8.2f} s   {len(p_bf):,} pairs")

    same = np.array_equal(p_idx, p_bf) and np.array_equal(d_idx, d_bf)
    print(f"same pairs: {same}")
    print(f"speed-up (brute / indexed): {t_bf / t_idx:.1f}x")
    if not same:
        raise SystemExit("the two searches disagree")
    if len(p_bf) < inside * 0.95:
        raise SystemExit(f"only {len(p_bf)} pairs found for {inside} planted within the threshold")


if __name__ == "__main__":
    main()
