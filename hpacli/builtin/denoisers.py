"""Built-in denoisers, registered through the plugin hook like any third-party ones."""

from __future__ import annotations

from .. import hookimpl


@hookimpl
def register_denoisers(register):
    def graph_l1(**params):
        from ..label.graph_l1 import GraphL1Denoiser

        return GraphL1Denoiser(**params)

    register(
        "graph-l1",
        graph_l1,
        "kNN graph (k=200) + normalised-Laplacian eigenbasis (50) + L1 alternating solver (λ=0.001, γ=0.12)",
    )
