"""Built-in denoisers, registered through the plugin hook like any third-party ones."""

from __future__ import annotations

from .. import hookimpl
from ..registry import lazy


@hookimpl
def register_denoisers(register):
    register(
        "graph-l1",
        lazy("hpacli.label.graph_l1:GraphL1Denoiser"),
        "kNN graph (k=200) + normalised-Laplacian eigenbasis (50) + L1 alternating solver (λ=0.001, γ=0.12)",
    )
