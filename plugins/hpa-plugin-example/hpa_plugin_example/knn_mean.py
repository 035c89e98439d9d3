"""A simple denoiser that follows the hpacli denoiser contract (see hpacli/hookspecs.py)."""

from __future__ import annotations

import numpy as np


class KnnMeanDenoiser:
    def __init__(self, k: int = 10, alpha: float = 0.5) -> None:
        self.k = int(k)
        self.alpha = float(alpha)

    def denoise(self, embeddings, y_init, progress=None):
        x = np.asarray(embeddings, dtype=np.float32)
        y = np.asarray(y_init, dtype=np.float32)
        k = min(self.k, len(x) - 1)
        if k < 1:
            return y.copy()
        sq = (x * x).sum(1)
        out = np.empty_like(y)
        for start in range(0, len(x), 1024):
            d = sq[start : start + 1024, None] - 2 * x[start : start + 1024] @ x.T + sq[None, :]
            idx = np.argpartition(d, k, axis=1)[:, : k + 1]  # includes the cell itself
            out[start : start + 1024] = (1 - self.alpha) * y[start : start + 1024] + self.alpha * y[idx].mean(1)
        return out
