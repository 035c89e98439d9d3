"""k-nearest-neighbour graphs over cell embeddings, exact for small N, approximate at scale.

``k`` counts the cell itself, as the seed's graph did (sklearn ``kneighbors_graph(...,
include_self=True)``: k = 200 is the cell and its 199 nearest other cells). The tables here
hold the ``k − 1`` other cells; the cell itself is implied (the normalised Laplacian ignores
self loops anyway). The de-noising graph (k = 200, Euclidean, on 1024-d embeddings) was the
bulk of the original's 14 hours: an exact brute-force search costs N² · D multiply-adds. Here:

``exact``
    faiss ``IndexFlatL2`` over the full-dimensional embeddings (BLAS brute force, blocked),
    with near-ties at the k-th distance settled by float64 distances (float32 search alone
    mis-orders a few); the right choice up to a few tens of thousands of cells. The same
    check follows ``ivf``/``hnsw`` without PCA.
``pca-exact``
    a PCA (fitted on a sample) to ``pca_dim`` dimensions, then exact search in that space.
``ivf``
    optional PCA, then faiss ``IndexIVFFlat`` (``nlist`` k-means cells, ``nprobe`` of them
    searched per query, by default 5 % of them). The default at scale.
``hnsw``
    optional PCA, then faiss ``IndexHNSWFlat``.

Embeddings may be any array-like with ``.shape`` and row slicing (a numpy array, a Zarr
array in float16): they are read ``chunk`` rows at a time and converted to float32, so
only the reduced matrix (N × pca_dim float32) is ever whole in memory on the PCA paths.

:func:`knn_recall` measures recall@k of any neighbour table against exact search for a
sample of query cells, the number to report whenever an approximate method is used.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import HpaError, InputError

METHODS = ("auto", "exact", "pca-exact", "ivf", "hnsw")
AUTO_EXACT_MAX = 20000  # at most this many cells: exact search at full dimension


@dataclass
class KnnGraph:
    """``indices[i]`` are the ``k − 1`` nearest other cells of cell ``i``, nearest first
    (``k`` counts the cell itself, as the seed's ``include_self=True`` graph)."""

    indices: np.ndarray  # [N, k - 1] int32
    distances: np.ndarray  # [N, k - 1] float32, squared Euclidean (in the searched space)
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.indices.shape[0])

    @property
    def k(self) -> int:
        """Neighbourhood size counting the cell itself."""
        return int(self.indices.shape[1]) + 1


# ------------------------------------------------------------------------- helpers
def _faiss():
    try:
        import faiss
    except ImportError:  # pragma: no cover - faiss-cpu is a dependency
        raise HpaError("the kNN graph needs faiss-cpu: pip install faiss-cpu") from None
    return faiss


def set_threads(threads: int | None) -> None:
    if threads:
        _faiss().omp_set_num_threads(int(threads))


def _check_source(emb) -> tuple[int, int]:
    shape = getattr(emb, "shape", None)
    if shape is None or len(shape) != 2:
        raise InputError(f"embeddings must be a 2-d array [cells, dims], got shape {shape}")
    n, d = int(shape[0]), int(shape[1])
    if n < 2 or d < 1:
        raise InputError(f"need at least 2 cells with embeddings, got shape {shape}")
    return n, d


def iter_chunks(emb, chunk: int = 16384):
    """Yield ``(start, float32 block)`` over the rows of an array-like (numpy, Zarr, h5py)."""
    n = int(emb.shape[0])
    for start in range(0, n, chunk):
        block = np.ascontiguousarray(np.asarray(emb[start : start + chunk]), dtype=np.float32)
        if not np.isfinite(block).all():
            bad = start + int(np.flatnonzero(~np.isfinite(block).all(axis=1))[0])
            raise InputError(f"embedding of cell {bad} is not finite (NaN or inf); re-run the embedding stage")
        yield start, block


def load_float32(emb, chunk: int = 16384) -> np.ndarray:
    n, d = _check_source(emb)
    if isinstance(emb, np.ndarray) and emb.dtype == np.float32 and emb.flags.c_contiguous:
        if not np.isfinite(emb).all():
            raise InputError("embeddings contain NaN or inf; re-run the embedding stage")
        return emb
    out = np.empty((n, d), dtype=np.float32)
    for start, block in iter_chunks(emb, chunk):
        out[start : start + len(block)] = block
    return out


def _centred(x: np.ndarray) -> np.ndarray:
    """float32 copy with the mean row subtracted: faiss computes ‖x‖² + ‖y‖² − 2x·y in float32,
    which loses the order of near neighbours far from the origin (measured on real
    embeddings: 52 of 1261 cells got another 200th neighbour than a float64 search;
    none once centred)."""
    return x - x.mean(axis=0, dtype=np.float64).astype(np.float32)


# float32 ‖x‖² + ‖y‖² − 2x·y is off by at most ~4·eps32·(‖x‖² + ‖y‖²) ≈ 2.4e-7 of the norms;
# candidates this close (relative to the norms) to the k-th distance are re-checked in float64
TIE_BAND = 1e-5
EXTRA_CANDIDATES = 16


def _settle_boundary(full: np.ndarray, sq: np.ndarray, start: int, idx: np.ndarray, dist: np.ndarray,
                     keep: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep the ``keep`` nearest of each query's candidates (``idx``/``dist`` sorted by the
    float32 search), deciding the candidates near the ``keep``-th distance by exact float64
    distances computed from the embeddings themselves. Float32 search alone mis-orders a few
    near-ties (3 of 6,000 synthetic cells at k = 200, enough to move Y_opt by 3e-3); only
    those few rows cost anything here."""
    b, fetched = idx.shape
    out_i = idx[:, :keep].astype(np.int64)
    out_d = dist[:, :keep].astype(np.float64)
    if fetched <= keep:
        return out_i, out_d
    q_sq = sq[start : start + b]
    cand_sq = np.where(idx >= 0, sq[np.maximum(idx, 0)], 0.0)
    band = TIE_BAND * (q_sq + cand_sq.max(axis=1))
    near = (np.abs(dist - dist[:, keep - 1 : keep]) <= band[:, None]) & (idx >= 0)
    for r in np.flatnonzero(near.sum(axis=1) > 1):
        q = full[start + r].astype(np.float64)
        if near[r, -1]:  # the tie reaches past the candidates fetched: rank this query against all cells
            d64 = ((full.astype(np.float64) - q) ** 2).sum(axis=1)
            order = np.lexsort((np.arange(len(full)), d64))[:keep]
            out_i[r], out_d[r] = order, d64[order]
            continue
        pos = np.flatnonzero(near[r])
        first = int(pos[0])
        c = idx[r, pos].astype(np.int64)
        d64 = ((full[c].astype(np.float64) - q) ** 2).sum(axis=1)
        order = np.lexsort((c, d64))[: keep - first]
        out_i[r, first:] = c[order]
        out_d[r, first:] = d64[order]
    return out_i, out_d


@dataclass
class Pca:
    mean: np.ndarray  # [D] float32
    components: np.ndarray  # [D, d] float32, orthonormal columns
    explained: float  # fraction of the sample's variance kept

    def transform(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray((x - self.mean) @ self.components, dtype=np.float32)


def fit_pca(emb, dim: int, sample: int = 50000, seed: int = 0, chunk: int = 16384) -> Pca:
    """PCA from the covariance of an evenly spread sample of rows (read in chunks)."""
    n, d = _check_source(emb)
    dim = min(int(dim), d)
    rng = np.random.default_rng(seed)
    take = np.sort(rng.choice(n, size=min(sample, n), replace=False))
    rows = []
    for start in range(0, n, chunk):
        sel = take[(take >= start) & (take < start + chunk)]
        if len(sel):
            block = np.asarray(emb[start : start + chunk], dtype=np.float32)
            rows.append(block[sel - start].astype(np.float64))
    x = np.concatenate(rows)
    mean = x.mean(axis=0)
    x -= mean
    cov = x.T @ x / max(len(x) - 1, 1)
    w, v = np.linalg.eigh(cov)
    order = np.argsort(w)[::-1]
    w, v = w[order], v[:, order]
    total = float(w.sum()) or 1.0
    return Pca(mean.astype(np.float32), np.ascontiguousarray(v[:, :dim], dtype=np.float32), float(w[:dim].sum() / total))


def reduce(emb, pca: Pca, chunk: int = 16384, progress=None, task=None) -> np.ndarray:
    n, _ = _check_source(emb)
    out = np.empty((n, pca.components.shape[1]), dtype=np.float32)
    for start, block in iter_chunks(emb, chunk):
        out[start : start + len(block)] = pca.transform(block)
        if progress is not None and task is not None:
            progress.advance(task, len(block))
    return out


def _drop_self(idx: np.ndarray, dist: np.ndarray, start: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """From k + 1 results per query (the query among them), keep the k others: drop the query
    itself, or the farthest result if it is absent (duplicates at distance 0)."""
    rows = np.arange(len(idx))
    is_self = idx == (start + rows)[:, None]
    # a missing neighbour (-1, too few candidates) is treated as self so that it goes first
    is_self |= idx < 0
    has = is_self.any(axis=1)
    pos = np.where(has, is_self.argmax(axis=1), k)  # column to drop
    keep = np.ones(idx.shape, dtype=bool)
    keep[rows, pos] = False
    out_i = idx[keep].reshape(len(idx), k)
    out_d = dist[keep].reshape(len(idx), k)
    return out_i, out_d


def _search(index, x: np.ndarray, k: int, chunk: int, progress=None, task=None,
            full: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest cells of every cell (itself included), returned without itself.
    With ``full`` (the embeddings the index holds, uncentred), a few more candidates are
    fetched and near-ties at the k-th distance settled in float64 (:func:`_settle_boundary`)."""
    n = len(x)
    kk = min(k, n)
    fetch = kk if full is None else min(n, kk + EXTRA_CANDIDATES)
    sq = None
    if full is not None:  # squared norms of the searched (centred) vectors: the scale of float32 errors
        sq = np.einsum("ij,ij->i", x, x, dtype=np.float64)
    indices = np.empty((n, kk - 1), dtype=np.int32)
    distances = np.empty((n, kk - 1), dtype=np.float32)
    for start in range(0, n, chunk):
        q = x[start : start + chunk]
        d, i = index.search(q, fetch)
        if full is not None:
            i, d = _settle_boundary(full, sq, start, i, d, kk)
        i, d = _drop_self(i, d, start, kk - 1)
        if (i < 0).any():
            raise HpaError(
                "the approximate kNN search returned fewer than k neighbours for some cells; "
                "raise --nprobe (or use --knn exact)"
            )
        indices[start : start + len(q)] = i
        distances[start : start + len(q)] = d
        if progress is not None and task is not None:
            progress.advance(task, len(q))
    return indices, distances


def default_nlist(n: int) -> int:
    return int(max(16, min(65536, round(4 * np.sqrt(n)))))


def default_nprobe(nlist: int) -> int:
    """Probe ~5 % of the IVF cells (at least 24): recall@200 ≈ 0.97 on clustered 1024-d
    embeddings at 100k cells, where a fixed 24 probes fell to 0.86 (0.80 at 400k)."""
    return int(min(nlist, max(24, round(0.05 * nlist))))


def knn_graph(
    emb,
    k: int = 200,
    method: str = "auto",
    *,
    pca_dim: int = 128,
    nlist: int | None = None,
    nprobe: int | None = None,
    hnsw_m: int = 32,
    ef_search: int = 256,
    ef_construction: int = 80,
    train_sample: int = 100000,
    chunk: int = 8192,
    threads: int | None = None,
    seed: int = 0,
    progress=None,
) -> KnnGraph:
    """The ``k`` nearest cells of every cell, itself counted (squared Euclidean): the table
    holds the ``k − 1`` others; see the module doc."""
    if method not in METHODS:
        raise HpaError(f"unknown kNN method {method!r}; choose one of {', '.join(METHODS)}")
    n, d = _check_source(emb)
    k = int(k)
    if k < 2:
        raise HpaError(f"k must be at least 2 (it counts the cell itself), got {k}")
    if k > n:
        raise InputError(f"k = {k} neighbours (the cell itself included) need at least {k} cells; this fold has {n} "
                         "(lower --k)")
    if method == "auto":
        method = "exact" if n <= AUTO_EXACT_MAX else "ivf"
    faiss = _faiss()
    set_threads(threads)
    seconds: dict[str, float] = {}
    params: dict[str, Any] = {"k": k, "n": n, "dim": d}
    t0 = time.perf_counter()
    task = None
    full = None  # full-dimensional embeddings: candidates are re-ranked in float64 against them
    if method == "exact":
        full = load_float32(emb, chunk)
        x = _centred(full)
    else:
        pca = fit_pca(emb, pca_dim, sample=min(train_sample, n), seed=seed, chunk=chunk) if pca_dim and pca_dim < d else None
        if pca is None:
            full = load_float32(emb, chunk)
            x = _centred(full)
        else:
            if progress is not None:
                task = progress.add_task("kNN: reduce", total=n, unit="cells", info=f"PCA {d}→{pca.components.shape[1]}")
            x = reduce(emb, pca, chunk, progress, task)
            params.update(pca_dim=int(pca.components.shape[1]), pca_explained=round(pca.explained, 4))
    seconds["load"] = time.perf_counter() - t0
    dim = x.shape[1]
    t0 = time.perf_counter()
    if method in ("exact", "pca-exact"):
        index = faiss.IndexFlatL2(dim)
        index.add(x)
    elif method == "ivf":
        nl = int(nlist or default_nlist(n))
        nl = max(1, min(nl, n // 8))
        quantizer = faiss.IndexFlatL2(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nl)
        rng = np.random.default_rng(seed)
        ts = min(n, max(train_sample, 40 * nl))
        train = x[np.sort(rng.choice(n, size=ts, replace=False))] if ts < n else x
        index.cp.seed = seed
        index.train(train)
        index.add(x)
        index.nprobe = int(min(nprobe or default_nprobe(nl), nl))
        params.update(nlist=nl, nprobe=int(index.nprobe))
    else:  # hnsw
        index = faiss.IndexHNSWFlat(dim, int(hnsw_m))
        index.hnsw.efConstruction = int(ef_construction)
        index.add(x)
        index.hnsw.efSearch = int(max(ef_search, k))
        params.update(hnsw_m=int(hnsw_m), ef_search=int(index.hnsw.efSearch), ef_construction=int(ef_construction))
    seconds["index"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if progress is not None:
        task = progress.add_task("kNN: search", total=n, unit="cells", info=f"{method}, k={k}")
    indices, distances = _search(index, x, k, chunk, progress, task, full)
    seconds["search"] = time.perf_counter() - t0
    del index
    return KnnGraph(indices, distances, method, params, seconds)


def exact_knn_numpy(x: np.ndarray, k: int, chunk: int = 2048) -> np.ndarray:
    """Exact kNN by numpy brute force (squared Euclidean, float64): the reference. ``k``
    counts the cell itself, as in :func:`knn_graph`; returns the ``k − 1`` other cells."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    if not 2 <= k <= n:
        raise InputError(f"k = {k} neighbours (the cell itself included) need 2 <= k <= {n} cells")
    k = k - 1  # the others
    sq = np.einsum("ij,ij->i", x, x)
    out = np.empty((n, k), dtype=np.int64)
    for start in range(0, n, chunk):
        q = x[start : start + chunk]
        d2 = sq[start : start + chunk, None] - 2.0 * q @ x.T + sq[None, :]
        d2[np.arange(len(q)), np.arange(start, start + len(q))] = np.inf  # not its own neighbour
        part = np.argpartition(d2, k - 1, axis=1)[:, :k]
        order = np.argsort(np.take_along_axis(d2, part, axis=1), axis=1, kind="stable")
        out[start : start + len(q)] = np.take_along_axis(part, order, axis=1)
    return out


def knn_recall(emb, indices: np.ndarray, sample: int = 500, seed: int = 0, chunk: int = 16384) -> float:
    """Mean recall@k of ``indices`` against exact full-dimensional search, on ``sample`` queries.

    Streams the embeddings in chunks; memory is ``sample × N`` distances at most one chunk
    wide at a time.
    """
    n, _ = _check_source(emb)
    k = indices.shape[1]
    rng = np.random.default_rng(seed)
    q_idx = np.sort(rng.choice(n, size=min(sample, n), replace=False))
    if isinstance(emb, np.ndarray):
        q = np.ascontiguousarray(emb[q_idx], dtype=np.float32)
    else:  # gather the query rows in one chunked pass (Zarr and h5py need no fancy indexing)
        q = np.concatenate(
            [block[q_idx[(q_idx >= s) & (q_idx < s + len(block))] - s] for s, block in iter_chunks(emb, chunk)]
        )
    best_d = np.full((len(q), k), np.inf, dtype=np.float64)
    best_i = np.full((len(q), k), -1, dtype=np.int64)
    qsq = np.einsum("ij,ij->i", q.astype(np.float64), q.astype(np.float64))
    for start, block in iter_chunks(emb, chunk):
        b = block.astype(np.float64)
        d2 = qsq[:, None] - 2.0 * (q.astype(np.float64) @ b.T) + np.einsum("ij,ij->i", b, b)[None, :]
        cols = np.arange(start, start + len(block))
        d2[cols[None, :] == q_idx[:, None]] = np.inf
        cand_d = np.concatenate([best_d, d2], axis=1)
        cand_i = np.concatenate([best_i, np.broadcast_to(cols, d2.shape)], axis=1)
        part = np.argpartition(cand_d, k - 1, axis=1)[:, :k]
        best_d = np.take_along_axis(cand_d, part, axis=1)
        best_i = np.take_along_axis(cand_i, part, axis=1)
    hits = [len(np.intersect1d(best_i[r], indices[q_idx[r]], assume_unique=True)) for r in range(len(q_idx))]
    return float(np.mean(hits) / k)


def connectivity(indices: np.ndarray, n: int | None = None, dtype=np.float64):
    """Symmetrised 0/1 adjacency ``(A + Aᵀ) > 0`` of a kNN table, as scipy CSR (no self loops)."""
    import scipy.sparse as sp

    indices = np.asarray(indices)
    n = int(n if n is not None else indices.shape[0])
    k = indices.shape[1]
    rows = np.repeat(np.arange(indices.shape[0], dtype=np.int32), k)
    cols = indices.reshape(-1).astype(np.int32)
    a = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(n, n))
    del rows, cols
    a = a + a.T  # 1 or 2 where the edge exists
    a.data[:] = 1
    a.setdiag(0)
    a.eliminate_zeros()
    return a.astype(dtype, copy=False)
