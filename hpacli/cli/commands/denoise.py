"""hpa denoise: graph label de-noising of a pseudo-label run, per cell fold."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..options import OverwriteOpt, QuietOpt, StoreOpt


def command(
    store: StoreOpt = Path("hpa.zarr"),
    run: Annotated[str, typer.Option("--run", "-r", help="The pseudo-label run to de-noise.")] = "default",
    fold: Annotated[str, typer.Option("--fold", help="A de-noising cell fold (0, 1, ...) or 'all'.")] = "all",
    denoiser: Annotated[str, typer.Option("--denoiser", help="A registered denoiser (`hpa plugins`).")] = "graph-l1",
    k: Annotated[int, typer.Option("--k", min=2, help="kNN graph size per cell, the cell itself counted (the "
                                   "seed's include_self=True: 200 = the cell + 199 nearest others).")] = 200,
    n_eig: Annotated[int, typer.Option("--n-eig", min=1, help="Laplacian eigenpairs (smallest).")] = 50,
    lam: Annotated[float, typer.Option("--lambda", min=0, help="Weight λ of ‖diag(√Λ)A‖₁.")] = 0.001,
    gamma: Annotated[float, typer.Option("--gamma", min=0, help="Weight γ of ‖Y − Y_init‖₁.")] = 0.12,
    tol: Annotated[float, typer.Option("--tol", min=0, help="Stop when no entry of Y moves by more than this "
                                       "(the optimum); 0 = the seed's early rule (--rtol, --stop-frac).")] = 1e-6,
    rtol: Annotated[float, typer.Option("--rtol", min=0, help="With --tol 0: stop when the relative change per "
                                        "entry is below this...")] = 0.01,
    stop_frac: Annotated[float, typer.Option("--stop-frac", help="...for at least this fraction of entries.")] = 0.999,
    max_iter: Annotated[int, typer.Option("--max-iter", min=1, help="At most this many alternations.")] = 1000,
    knn: Annotated[str, typer.Option("--knn", help="auto (exact ≤ 20k cells, else PCA + IVF), exact, pca-exact, "
                                     "ivf, hnsw.")] = "auto",
    pca_dim: Annotated[int, typer.Option("--pca-dim", min=0, help="PCA dimensions before approximate search "
                                         "(0 = none).")] = 128,
    nprobe: Annotated[int, typer.Option("--nprobe", min=0, help="IVF cells searched per query "
                                        "(0 = 5 % of them, at least 24).")] = 0,
    eig_tol: Annotated[float, typer.Option("--eig-tol", min=0, help="Lanczos tolerance.")] = 1e-6,
    threads: Annotated[int, typer.Option("--threads", min=0, help="faiss threads (0 = all cores).")] = 0,
    recall_sample: Annotated[int, typer.Option("--recall-sample", min=0, help="Query cells to measure the kNN "
                                               "recall@k against exact search (0 = skip).")] = 300,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """De-noise pseudo-labels on a kNN graph of the cell embeddings (per cell fold, resumable).

    Y_init = the 19 probabilities + "nothing there" (1 − max); Y_opt minimises
    ½‖Y − VA‖² + λ‖diag(√Λ)A‖₁ + γ‖Y − Y_init‖₁ over the graph's 50 smoothest eigenvectors V.
    """
    from rich.table import Table

    from ...errors import HpaError
    from ...label.denoise import run_denoise
    from ...progress import console, make_progress
    from ...store import open_store

    folds: str | list[int] = "all"
    if fold != "all":
        try:
            folds = [int(f) for f in fold.split(",")]
        except ValueError:
            raise HpaError(f"--fold must be 'all' or fold numbers like 0 or 0,2; got {fold!r}") from None
    params = {"k": k, "n_eig": n_eig, "lam": lam, "gamma": gamma, "rtol": rtol, "stop_frac": stop_frac,
              "max_iter": max_iter}
    if denoiser == "graph-l1":
        params["tol"] = tol
    if denoiser == "graph-l1":
        params.update(knn=knn, pca_dim=pca_dim, nprobe=nprobe or None, eig_tol=eig_tol, threads=threads or None)
    st = open_store(store, "r+")  # never create a store here
    with make_progress(disable=quiet) as progress:
        summary = run_denoise(st, run, folds, denoiser, params, overwrite=overwrite, recall_sample=recall_sample,
                              progress=progress)
    table = Table(title=f"de-noised {run!r} ({denoiser})")
    for col in ("fold", "cells", "iterations", "objective", "kNN", "recall@k", "seconds (kNN / eig / solve)"):
        table.add_column(col)
    for f, d in summary.diagnostics.items():
        sec = d.get("seconds", {})
        table.add_row(str(f), f"{d.get('cells', 0):,}", str(d.get("n_iter", "-")),
                      f"{d['objective']:.6g}" if "objective" in d else "-", str(d.get("knn", "-")),
                      str(d.get("recall_at_k", "-")),
                      f"{sec.get('knn', 0):.1f} / {sec.get('eigsh', 0):.1f} / {sec.get('solver', 0):.1f}")
    console.print(table)
    if summary.folds_skipped:
        console.print(f"folds already done: {', '.join(map(str, summary.folds_skipped))} (--overwrite to redo)")
