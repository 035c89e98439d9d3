"""hpa denoise: label de-noising of a pseudo-label run, per cell fold, by a registered denoiser."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ...registry import completer
from ..options import JsonOpt, OverwriteOpt, PluginOptionsOpt, QuietOpt, StoreOpt


def command(
    store: StoreOpt = Path("hpa.zarr"),
    run: Annotated[str, typer.Option("--run", "-r", help="The pseudo-label run to de-noise.")] = "default",
    fold: Annotated[str, typer.Option("--fold", help="A de-noising cell fold (0, 1, ...) or 'all'.")] = "all",
    denoiser: Annotated[str, typer.Option("--denoiser", help="A registered denoiser (`hpa plugins`).",
                                          autocompletion=completer("denoiser"))] = "graph-l1",
    option: PluginOptionsOpt = None,
    k: Annotated[int | None, typer.Option("--k", min=2, help="Alias of -o k=N: graph-l1's kNN graph size per cell, "
                                          "the cell itself counted (default 200 = the cell + 199 others).",
                                          show_default=False)] = None,
    n_eig: Annotated[int | None, typer.Option("--n-eig", min=1, help="Alias of -o n_eig=N: graph-l1's Laplacian "
                                              "eigenpairs (default 50).", show_default=False)] = None,
    recall_sample: Annotated[int, typer.Option("--recall-sample", min=0, help="Query cells to measure the recall@k "
                                               "of approximate neighbour lists against exact search "
                                               "(0 = skip).")] = 300,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """De-noise pseudo-labels per cell fold (resumable); the denoiser's own options go with -o.

    graph-l1 (default): Y_init = the 19 probabilities + "nothing there" (1 − max); Y_opt minimises
    ½‖Y − VA‖² + λ‖diag(√Λ)A‖₁ + γ‖Y − Y_init‖₁ over the 50 smoothest eigenvectors V of a kNN
    graph of the cell embeddings. Its options: k, n_eig, lam, gamma, tol, rtol, stop_frac,
    max_iter, knn (auto, exact, pca-exact, ivf, hnsw), pca_dim, nprobe, eig_tol, threads, seed
    (e.g. -o lam=0.002 -o knn=exact; `hpa plugins --options denoiser graph-l1`).
    """
    from rich.table import Table

    from ...errors import HpaError
    from ...label.denoise import run_denoise
    from ...progress import console, make_progress
    from ...store import open_store
    from ..plugin_options import parse_options
    from ..render import print_json

    folds: str | list[int] = "all"
    if fold != "all":
        try:
            folds = [int(f) for f in fold.split(",")]
        except ValueError:
            raise HpaError(f"--fold must be 'all' or fold numbers like 0 or 0,2; got {fold!r}") from None
    params = parse_options(option, {"k": k, "n_eig": n_eig})
    st = open_store(store, "r+")  # never create a store here
    with make_progress(disable=quiet or json_out) as progress:
        summary = run_denoise(st, run, folds, denoiser, params, overwrite=overwrite, recall_sample=recall_sample,
                              progress=progress)
    if json_out:
        print_json(summary)
        return
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
