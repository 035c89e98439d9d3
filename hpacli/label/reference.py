"""The faithful reference of ``graph-l1``: what the original computed, the slow way.

* exact k-NN by numpy brute force in float64 (no faiss, no sklearn), ``k`` counting the
  cell itself as the seed's ``include_self=True`` graph (k − 1 other cells);
* the symmetrised connectivity and the normalised Laplacian as a dense matrix, its
  smallest eigenpairs by a dense symmetric eigensolver (LAPACK);
* the A-step by ADMM basis-pursuit de-noising, 1000 iterations per column from zero,
  with the general ``(VᵀV + ρI)⁻¹`` factor (it does not assume ``V`` orthonormal).

Only for small N (tests) and the 10k point of the benchmark: memory is ``N²`` doubles.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError
from .graph_l1 import soft
from .knn import exact_knn_numpy

MAX_N = 20000


def dense_connectivity(indices: np.ndarray) -> np.ndarray:
    n = len(indices)
    a = np.zeros((n, n), dtype=np.float64)
    a[np.repeat(np.arange(n), indices.shape[1]), indices.reshape(-1)] = 1.0
    a = ((a + a.T) > 0).astype(np.float64)
    np.fill_diagonal(a, 0.0)
    return a


def dense_laplacian_eigs(a: np.ndarray, n_eig: int) -> tuple[np.ndarray, np.ndarray]:
    from scipy.linalg import eigh

    deg = a.sum(axis=1)
    inv = 1.0 / np.sqrt(deg)
    lap = np.eye(len(a)) - inv[:, None] * a * inv[None, :]
    w, v = eigh(lap, subset_by_index=[0, n_eig - 1], overwrite_a=True, check_finite=False)
    return np.clip(w, 0.0, 2.0), v


def admm_a_step(v: np.ndarray, y: np.ndarray, eigvals: np.ndarray, lam: float, iters: int = 1000,
                rho: float = 1.0) -> np.ndarray:
    """``argmin_A ½‖Y − VA‖² + λ‖diag(√Λ)A‖₁`` by ADMM (lasso form), each column independently.

    x ← (VᵀV + ρI)⁻¹(Vᵀy + ρ(z − u)); z ← soft(x + u, λ√Λ/ρ); u ← u + x − z.
    The columns share the factor, so they are iterated side by side (the updates never mix
    columns).
    """
    m = v.shape[1]
    chol = np.linalg.cholesky(v.T @ v + rho * np.eye(m))
    vty = v.T @ y
    t = (lam * np.sqrt(np.maximum(eigvals, 0.0)) / rho)[:, None]
    z = np.zeros_like(vty)
    u = np.zeros_like(vty)
    for _ in range(iters):
        rhs = vty + rho * (z - u)
        x = np.linalg.solve(chol.T, np.linalg.solve(chol, rhs))
        z = soft(x + u, t)
        u = u + x - z
    return z


def y_step_cases(f: np.ndarray, y0: np.ndarray, gamma: float) -> np.ndarray:
    """``argmin_{z ≥ 0} ½(z − F)² + γ|z − y0|`` by cases (written apart from the fast path).

    Above y0 the derivative is z − F + γ (zero at F − γ), below it z − F − γ (zero at F + γ);
    when neither stationary point lies on its side, the kink y0 is the minimum. Clipped at 0.
    """
    z = y0.copy()
    up = f - gamma > y0
    down = f + gamma < y0
    z[up] = f[up] - gamma
    z[down] = f[down] + gamma
    z[z < 0] = 0.0
    return z


def reference_objective(y, a, v, w, y0, lam, gamma) -> float:
    total = 0.0
    for j in range(y.shape[1]):  # column by column, as the original
        r = y[:, j] - v @ a[:, j]
        total += 0.5 * float(r @ r) + lam * float(np.sum(np.sqrt(w) * np.abs(a[:, j])))
        total += gamma * float(np.sum(np.abs(y[:, j] - y0[:, j])))
    return total


def reference_alternate(v, w, y0, lam, gamma, rtol, stop_frac, max_iter, admm_iters, tol=None):
    """Alternate until no entry moves by more than ``tol``, or (``tol`` None/0) by the seed's
    rule: ``stop_frac`` of the entries moved by at most ``rtol`` of their old value."""
    y = y0.copy()
    history = []
    it = 0
    a = None
    while it < max_iter:
        it += 1
        a = admm_a_step(v, y, w, lam, admm_iters)
        y_new = y_step_cases(v @ a, y0, gamma)
        moved = np.abs(y_new - y)
        stop = moved.max() <= tol if tol else np.mean(moved <= rtol * np.abs(y)) >= stop_frac
        y = y_new
        history.append(reference_objective(y, a, v, w, y0, lam, gamma))
        if stop:
            break
    return y, a, it, history


@dataclass
class ReferenceResult:
    y_opt: np.ndarray
    a: np.ndarray
    eigvals: np.ndarray
    v: np.ndarray
    knn: np.ndarray
    n_iter: int
    objective: float
    seconds: dict[str, float] = field(default_factory=dict)
    history: list[float] = field(default_factory=list)


def reference_denoise(embeddings, y_init, k: int = 200, n_eig: int = 50, lam: float = 0.001, gamma: float = 0.12,
                      rtol: float = 0.01, stop_frac: float = 0.999, max_iter: int = 1000,
                      admm_iters: int = 1000, tol: float | None = 1e-6) -> ReferenceResult:
    x = np.asarray(embeddings, dtype=np.float64)
    if len(x) > MAX_N:
        raise InputError(f"the reference is dense (N² memory); at most {MAX_N} cells, got {len(x)}")
    seconds = {}
    t0 = time.perf_counter()
    idx = exact_knn_numpy(x, k)
    seconds["knn"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    a = dense_connectivity(idx)
    seconds["laplacian"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    w, v = dense_laplacian_eigs(a, n_eig)
    del a
    seconds["eigsh"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    y0 = np.asarray(y_init, dtype=np.float64)
    y, a_opt, n_iter, history = reference_alternate(v, w, y0, lam, gamma, rtol, stop_frac, max_iter, admm_iters,
                                                    tol)
    seconds["solver"] = time.perf_counter() - t0
    return ReferenceResult(y, a_opt, w, v, idx, n_iter, history[-1], seconds, history)
