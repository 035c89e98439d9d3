"""Graph label de-noising at scale: time and peak memory per phase, growth, quality.

Synthetic folds of N cells × 1024-d float16 embeddings (as stored) with planted structure:
clusters in a 16-d latent space mapped non-linearly to 1024-d plus noise; every cluster
has a class profile over 19 classes; a rare class (mitotic spindle, 11) is a cluster of its
own next to a larger one, and 40 % of its positives are planted missing from Y_init
(probability 0..0.2 instead of 0.5..0.95). Plus a few scattered false positives.

For each N: the fast ``graph-l1`` (PCA + IVF kNN by default) phase by phase — kNN,
Laplacian, eigsh, solver — with wall time and peak RSS above the phase's start (psutil,
sampled every 20 ms; includes faiss/ARPACK native memory, which tracemalloc misses), and
recall@k of the kNN against exact search on a sample. The growth exponent of each phase is
fitted over the sizes run. At 10k (when run) the faithful reference (exact numpy kNN,
dense eigensolver, 1000-iteration ADMM) runs in the same process: time ratio, objective
and Y_opt agreement, and the selection quality of both graphs.

Quality: of the planted missing positives, how many each selection rule recovers and at
what precision (threshold 0.92·max, top-K with K = the number planted, neighbours k=20
min-hits 3).

Run: ``python benchmarks/denoise.py --sizes 10k,50k`` (default 10k,50k,100k,400k);
``--store hpa.zarr --run NAME`` measures a real pseudo-label run instead (per cell fold:
fast vs faithful time, objective, Y_opt, and recovery of truly mitotic cells under the
bound when the store holds synthetic cell truth).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import threading
import time

import numpy as np
import psutil

from hpacli.label import knn as knnmod
from hpacli.label.graph_l1 import DEFAULTS, alternate, laplacian_eigs, make_y_init
from hpacli.label.select import (
    known_positives,
    precision_recall,
    select_neighbours,
    select_threshold,
    select_top,
)

RARE = 11
GiB = 1024**3


class PeakRss:
    """Peak resident memory of this process while the block runs (sampled in a thread)."""

    def __init__(self, interval: float = 0.02) -> None:
        self.proc = psutil.Process()
        self.interval = interval

    def __enter__(self):
        self.start = self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        self.t0 = time.perf_counter()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            self._stop.wait(self.interval)

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)
        self.delta = self.peak - self.start


def parse_size(text: str) -> int:
    text = text.strip().lower()
    mult = 1000 if text.endswith("k") else 1
    return int(float(text.rstrip("k")) * mult)


def synthetic_fold(n: int, dim: int = 1024, n_clusters: int = 24, rare_frac: float = 0.02, missing: float = 0.4,
                   seed: int = 0, chunk: int = 50000):
    """Embeddings (float16 [n, dim]), Y_init [n, 20], planted missing positives, all positives."""
    rng = np.random.default_rng(seed)
    latent_dim = 16
    centres = rng.normal(size=(n_clusters, latent_dim)) * 2.5
    rare_centre = centres[0] + rng.normal(size=latent_dim) * 1.2  # next to cluster 0
    centres = np.vstack([centres, rare_centre])
    n_rare = int(round(rare_frac * n))
    sizes = rng.dirichlet(np.full(n_clusters, 3.0)) * (n - n_rare)
    sizes = np.floor(sizes).astype(int)
    sizes[0] += (n - n_rare) - sizes.sum()
    cluster = np.concatenate([np.repeat(np.arange(n_clusters), sizes), np.full(n_rare, n_clusters)])
    cluster = cluster[rng.permutation(n)]
    w1 = rng.normal(size=(latent_dim, dim)) / np.sqrt(latent_dim)
    w2 = rng.normal(size=(latent_dim, dim)) / np.sqrt(latent_dim)
    emb = np.empty((n, dim), dtype=np.float16)
    for s in range(0, n, chunk):
        c = cluster[s : s + chunk]
        z = centres[c] + rng.normal(size=(len(c), latent_dim)) * 0.8
        x = z @ w1 + 0.8 * np.tanh(z @ w2) + rng.normal(size=(len(c), dim)) * 0.35
        emb[s : s + len(c)] = x.astype(np.float16)
    # class profiles: 1-2 classes per cluster, never the rare one
    classes = [c for c in range(19) if c != RARE]
    probs = rng.uniform(0.0, 0.12, size=(n, 19))
    for j in range(n_clusters):
        members = np.flatnonzero(cluster == j)
        for c in rng.choice(classes, size=rng.integers(1, 3), replace=False):
            probs[members, c] = rng.uniform(0.45, 0.95, size=len(members))
    rare = np.flatnonzero(cluster == n_clusters)
    probs[rare, rng.choice(classes)] = rng.uniform(0.3, 0.8, size=len(rare))  # co-occurring class
    miss = rng.permutation(rare)[: int(round(missing * len(rare)))]
    probs[rare, RARE] = rng.uniform(0.5, 0.95, size=len(rare))
    probs[miss, RARE] = rng.uniform(0.0, 0.2, size=len(miss))
    fp = rng.choice(np.setdiff1d(np.arange(n), rare), size=max(1, n // 1000), replace=False)
    probs[fp, RARE] = rng.uniform(0.5, 0.9, size=len(fp))  # scattered false positives
    return emb, make_y_init(probs), np.sort(miss), np.sort(rare)


def quality(y_init, y_opt, knn_idx, miss, n_neigh: int = 20, min_hits: int = 3) -> dict:
    out = {}
    sel = {
        "threshold": select_threshold(y_init, y_opt, RARE, 0.4, 0.92),
        "top": select_top(y_init, y_opt, len(miss), RARE, 0.4),
    }
    if knn_idx is not None:
        pos = known_positives(y_init, RARE, 0.5)
        nb, _ = select_neighbours(knn_idx, pos, n_neigh, min_hits)
        sel["neighbours"] = nb[y_init[nb, RARE] < 0.4]
    for name, idx in sel.items():
        tp, p, r = precision_recall(idx, miss)
        out[name] = {"picked": int(len(idx)), "recovered": tp, "precision": round(p, 3), "recall": round(r, 3)}
    return out


def fmt_mem(b: float) -> str:
    return f"{b / GiB:.2f}G"


def run_fast(emb, y_init, args, knn_method: str | None = None) -> dict:
    n = emb.shape[0]
    knn_method = knn_method or args.knn
    res: dict = {"n": n, "phases": {}}
    gc.collect()
    base = psutil.Process().memory_info().rss
    opts = {"pca_dim": args.pca_dim, "nprobe": args.nprobe or None}
    if args.nlist:
        opts["nlist"] = args.nlist
    with PeakRss() as m:
        graph = knnmod.knn_graph(emb, args.k, knn_method, threads=args.threads, **opts)
    res["phases"]["knn"] = (m.seconds, m.delta)
    res["knn_detail"] = {k: round(v, 2) for k, v in graph.seconds.items()}
    res["knn_params"] = graph.params
    with PeakRss() as m:
        adj = knnmod.connectivity(graph.indices, n)
    res["phases"]["laplacian"] = (m.seconds, m.delta)
    res["nnz"] = int(adj.nnz)
    with PeakRss() as m:
        w, v = laplacian_eigs(adj, args.n_eig, "lanczos", args.eig_tol, inplace=True)
    res["phases"]["eigsh"] = (m.seconds, m.delta)
    del adj
    gc.collect()
    with PeakRss() as m:
        sol = alternate(v, w, y_init, args.lam, args.gamma, DEFAULTS["rtol"], DEFAULTS["stop_frac"], DEFAULTS["max_iter"])
    res["phases"]["solver"] = (m.seconds, m.delta)
    res["total_s"] = sum(t for t, _ in res["phases"].values())
    res["peak_rss"] = psutil.Process().memory_info().rss  # placeholder, replaced by ru_maxrss below
    import resource

    res["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    res["base_rss"] = base
    res["n_iter"], res["objective"] = sol.n_iter, sol.objective
    res["eig_range"] = (float(w[0]), float(w[-1]))
    if knn_method == "exact":
        res["recall"], res["recall_s"] = 1.0, 0.0
    else:
        with PeakRss() as m:
            res["recall"] = knnmod.knn_recall(emb, graph.indices, sample=args.recall_sample)
        res["recall_s"] = m.seconds
    return res, sol, graph, w, v


def real_store(args) -> int:
    """The same measurements on the embeddings of a real ``hpa pseudolabel`` run (read-only).

    Truth: the synthetic images' cell truth (``hpa synth`` writes it); the "missing"
    positives are truly mitotic cells whose pseudo-label is under the bound.
    """
    from hpacli.evaluate.celltruth import cell_truth
    from hpacli.label.denoise import _fold_rows
    from hpacli.label.graph_l1 import GraphL1Denoiser
    from hpacli.label.reference import reference_denoise
    from hpacli.store import open_store
    from hpacli.store import pseudolabels as pl

    st = open_store(args.store, "r")
    fold, _ = _fold_rows(st, args.run, "default")
    probs = pl.read_probs(st, args.run)
    truth, matched = cell_truth(st)
    print(f"store {args.store} run {args.run!r}: {int((fold >= 0).sum())} labelled cells in "
          f"{int(fold.max()) + 1} folds; {int((truth[:, RARE] & matched).sum())} truly mitotic cells (matched)")
    for f in range(int(fold.max()) + 1):
        rows = np.flatnonzero(fold == f)
        emb = pl.read_embeddings(st, args.run, rows, dtype=np.float32)
        y_init = make_y_init(probs[rows])
        k = min(args.k, len(rows) - 2)
        n_eig = min(args.n_eig, len(rows) - 2)
        true11 = truth[rows, RARE] & matched[rows]
        miss = np.flatnonzero(true11 & (y_init[:, RARE] < 0.4))
        fast = GraphL1Denoiser(k=k, n_eig=n_eig, lam=args.lam, gamma=args.gamma, knn=args.knn if len(rows) > 20000
                               else "exact").run(emb, y_init)
        t_fast = sum(fast.seconds.values())
        t0 = time.perf_counter()
        ref = reference_denoise(knnmod.load_float32(emb), y_init, k, n_eig, args.lam, args.gamma)
        t_ref = time.perf_counter() - t0
        print(f"\nfold {f}: {len(rows)} cells, k={k}, {int(true11.sum())} mitotic, {len(miss)} of them under the "
              f"bound (missing); embedding dim {emb.shape[1]}")
        print(f"  fast {t_fast:.2f}s { {p: round(v, 2) for p, v in fast.seconds.items()} }; reference {t_ref:.2f}s "
              f"({t_ref / max(t_fast, 1e-9):.1f}x)")
        print(f"  objective {fast.objective:.8g} vs reference {ref.objective:.8g} (rel. diff "
              f"{abs(fast.objective - ref.objective) / abs(ref.objective):.2e}); |ΔY_opt| max "
              f"{np.abs(fast.y_opt - ref.y_opt).max():.2e}; iterations {fast.n_iter} / {ref.n_iter}")
        if len(miss):
            print(f"  quality (fast graph): {json.dumps(quality(y_init, fast.y_opt, fast.knn.indices, miss))}")
            print(f"  quality (faithful graph): {json.dumps(quality(y_init, ref.y_opt, ref.knn, miss))}")
        else:
            print("  no mitotic cell under the bound in this fold: nothing to recover")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10k,50k,100k,400k")
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--k", type=int, default=DEFAULTS["k"])
    ap.add_argument("--n-eig", type=int, default=DEFAULTS["n_eig"])
    ap.add_argument("--lam", type=float, default=DEFAULTS["lam"])
    ap.add_argument("--gamma", type=float, default=DEFAULTS["gamma"])
    ap.add_argument("--knn", default="ivf", choices=knnmod.METHODS)
    ap.add_argument("--pca-dim", type=int, default=128)
    ap.add_argument("--nprobe", type=int, default=0, help="0 = the library default (5 %% of the IVF cells)")
    ap.add_argument("--nlist", type=int, default=0)
    ap.add_argument("--eig-tol", type=float, default=1e-6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--recall-sample", type=int, default=300)
    ap.add_argument("--exact-max", type=int, default=50000,
                    help="also run the exact faiss graph up to this N (effect of the approximation)")
    ap.add_argument("--no-reference", action="store_true", help="skip the faithful reference at 10k")
    ap.add_argument("--json", default="", help="append results as JSON lines to this file")
    ap.add_argument("--store", default="", help="instead: measure on a real store's pseudo-label run")
    ap.add_argument("--run", default="default", help="the pseudo-label run (with --store)")
    args = ap.parse_args(argv)
    if args.store:
        return real_store(args)
    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    print(f"graph-l1 benchmark: k={args.k} n_eig={args.n_eig} λ={args.lam} γ={args.gamma} knn={args.knn} "
          f"pca={args.pca_dim} nprobe={args.nprobe} threads={args.threads}; load avg {os.getloadavg()[0]:.2f} "
          f"on {os.cpu_count()} cpus", flush=True)
    rows = []
    for n in sizes:
        t0 = time.perf_counter()
        emb, y_init, miss, rare = synthetic_fold(n, args.dim)
        gen_s = time.perf_counter() - t0
        print(f"\nN={n:,}: {len(rare)} rare positives, {len(miss)} planted missing; data {emb.nbytes / GiB:.2f} GiB "
              f"float16, generated in {gen_s:.1f}s; load avg {os.getloadavg()[0]:.2f}", flush=True)
        res, sol, graph, w, v = run_fast(emb, y_init, args)
        for ph, (s, d) in res["phases"].items():
            print(f"  {ph:10s} {s:8.2f}s  +{fmt_mem(d)}", flush=True)
        print(f"  total      {res['total_s']:8.2f}s  process peak RSS {fmt_mem(res['peak_rss'])} "
              f"(before: {fmt_mem(res['base_rss'])}); nnz(A)={res['nnz']:,}; solver iterations {res['n_iter']}")
        print(f"  kNN detail {res['knn_detail']} params {res['knn_params']}")
        print(f"  recall@{args.k} vs exact (sample {args.recall_sample}): {res['recall']:.4f} ({res['recall_s']:.1f}s)")
        res["quality"] = quality(y_init, sol.y, graph.indices, miss)
        print(f"  quality (fast graph): {json.dumps(res['quality'])}")
        if n <= args.exact_max and args.knn != "exact":
            ex, ex_sol, ex_graph, *_ = run_fast(emb, y_init, args, "exact")
            eq = quality(y_init, ex_sol.y, ex_graph.indices, miss)
            overlap = np.mean([len(np.intersect1d(ex_graph.indices[i], graph.indices[i])) for i in range(0, n, 7)])
            d = np.abs(ex_sol.y - sol.y)
            top_fast = select_top(y_init, sol.y, len(miss), RARE)
            top_exact = select_top(y_init, ex_sol.y, len(miss), RARE)
            res["exact_graph"] = {"total_s": ex["total_s"], "knn_s": ex["phases"]["knn"][0], "quality": eq,
                                  "frac_cells_dy_gt_0.05": float((d.max(axis=1) > 0.05).mean()),
                                  "top_overlap": len(np.intersect1d(top_fast, top_exact)) / max(len(top_exact), 1),
                                  "y_opt_maxdiff": float(np.abs(ex_sol.y - sol.y).max()),
                                  "y_opt_meandiff": float(np.abs(ex_sol.y - sol.y).mean()),
                                  "objective": ex_sol.objective}
            print(f"  exact faiss graph (same solver): kNN {ex['phases']['knn'][0]:.1f}s, total {ex['total_s']:.1f}s; "
                  f"effect of the approximate graph on Y_opt: |ΔY_opt| max {res['exact_graph']['y_opt_maxdiff']:.3g} "
                  f"mean {res['exact_graph']['y_opt_meandiff']:.3g}; objective {ex_sol.objective:.6g} vs "
                  f"{sol.objective:.6g}")
            print(f"  cells with any |ΔY_opt| > 0.05: {100 * res['exact_graph']['frac_cells_dy_gt_0.05']:.2f}%; "
                  f"top-K selections shared: {100 * res['exact_graph']['top_overlap']:.1f}%")
            print(f"  quality (exact graph): {json.dumps(eq)}")
            del ex_sol, ex_graph
        if n <= 20000 and not args.no_reference:
            from hpacli.label.reference import reference_denoise

            gc.collect()
            with PeakRss() as m:
                ref = reference_denoise(np.asarray(emb, dtype=np.float32), y_init, args.k, args.n_eig, args.lam,
                                        args.gamma)
            rq = quality(y_init, ref.y_opt, ref.knn, miss)
            overlap = np.mean([len(np.intersect1d(ref.knn[i], graph.indices[i])) for i in range(n)]) / args.k
            res["reference"] = {"total_s": m.seconds, "phases": ref.seconds, "peak_delta": m.delta,
                                "objective": ref.objective, "n_iter": ref.n_iter, "quality": rq,
                                "graph_overlap": overlap,
                                "y_opt_maxdiff": float(np.abs(ref.y_opt - sol.y).max()),
                                "y_opt_meandiff": float(np.abs(ref.y_opt - sol.y).mean())}
            print(f"  reference (exact numpy kNN + dense eigh + ADMM×1000): {m.seconds:.1f}s "
                  f"{ {k: round(s, 1) for k, s in ref.seconds.items()} } +{fmt_mem(m.delta)}; "
                  f"ratio reference/fast = {m.seconds / res['total_s']:.1f}x")
            if "exact_graph" in res:
                eo = res["exact_graph"]["objective"]
                print(f"  reference vs exact faiss graph + closed-form solver: objective rel. diff "
                      f"{abs(eo - ref.objective) / abs(ref.objective):.2e}")
            print(f"  reference vs fast: kNN overlap {overlap:.4f}; objective {ref.objective:.6g} vs {sol.objective:.6g}; "
                  f"|ΔY_opt| max {res['reference']['y_opt_maxdiff']:.3g} mean {res['reference']['y_opt_meandiff']:.3g}")
            print(f"  quality (faithful graph): {json.dumps(rq)}")
        rows.append(res)
        if args.json:
            with open(args.json, "a") as fh:
                fh.write(json.dumps(res, default=float) + "\n")
        del emb, y_init, sol, graph, w, v
        gc.collect()
    if len(rows) >= 2:
        ns = np.log([r["n"] for r in rows])
        print("\ngrowth exponent (time ∝ N^e, least squares over the sizes run):")
        for ph in ["knn", "laplacian", "eigsh", "solver"]:
            e = np.polyfit(ns, np.log([max(r["phases"][ph][0], 1e-4) for r in rows]), 1)[0]
            print(f"  {ph:10s} e = {e:.2f}")
        e = np.polyfit(ns, np.log([r["total_s"] for r in rows]), 1)[0]
        print(f"  total      e = {e:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
