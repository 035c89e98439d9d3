"""The 8 dihedral transforms of a square image (flips and transposes), on arrays or tensors.

Code ``k`` in 0..7: bit 2 transposes the last two axes, then bit 0 flips vertically
(rows) and bit 1 flips horizontally (columns). Code 0 is the identity.
"""

from __future__ import annotations

import numpy as np

N_DIHEDRAL = 8


def dihedral(x, k: int):
    """Apply transform ``k`` to ``x`` (``[..., H, W]`` numpy array or torch tensor)."""
    k = int(k)
    if not 0 <= k < N_DIHEDRAL:
        raise ValueError(f"dihedral code must be 0..7, not {k}")
    if isinstance(x, np.ndarray):
        if k & 4:
            x = np.swapaxes(x, -1, -2)
        if k & 1:
            x = x[..., ::-1, :]
        if k & 2:
            x = x[..., :, ::-1]
        return np.ascontiguousarray(x)
    if k & 4:
        x = x.transpose(-1, -2)
    dims = [d for bit, d in ((1, -2), (2, -1)) if k & bit]
    if dims:
        x = x.flip(dims)
    return x.contiguous()


def random_dihedral(x, rng: np.random.Generator):
    return dihedral(x, int(rng.integers(N_DIHEDRAL)))
