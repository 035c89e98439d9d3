"""An hpacli plugin: copy this package to start your own.

hpacli finds it through the ``hpa`` entry point in pyproject.toml and calls the hook
functions below, marked with ``hpacli.hookimpl``. Keep module import cheap: import
torch inside the factories, not at the top.
"""

from __future__ import annotations

from hpacli import hookimpl


def _tiny_cnn(num_classes: int = 19, in_chans: int = 4, width: int = 16, **_):
    from .tiny_cnn import TinyCNN

    return TinyCNN(num_classes=num_classes, in_chans=in_chans, width=width)


def _mean_neighbours(k: int = 10, alpha: float = 0.5, **_):
    from .knn_mean import KnnMeanDenoiser

    return KnnMeanDenoiser(k=k, alpha=alpha)


@hookimpl
def register_backbones(register):
    register("example-tiny-cnn", _tiny_cnn, description="4-layer CNN for quick experiments (example plugin)")


@hookimpl
def register_denoisers(register):
    register("example-knn-mean", _mean_neighbours, description="blend each cell's labels with its k neighbours' mean")
