"""hpa-plugin-testkit: written from hpacli/hookspecs.py alone (see README.md)."""

from __future__ import annotations

from hpacli import hookimpl


def _net(num_classes: int = 19, in_chans: int = 4, width: int = 8):
    from .net import TinyNet

    return TinyNet(num_classes, in_chans, width)


def _badshape(num_classes: int = 19, in_chans: int = 4):
    from .net import TinyNet

    return TinyNet(num_classes + 1, in_chans, 4)  # one class too many


def _notmodule(num_classes: int = 19, in_chans: int = 4):
    return {"not": "a module"}


def _knn_vote(k: int = 5, alpha: float = 0.5):
    from .vote import KnnVote

    return KnnVote(k=k, alpha=alpha)


@hookimpl
def register_backbones(register):
    register("testkit-net", _net, description="tiny CNN without a config attribute (testkit)")
    register("testkit-badshape", _badshape, description="wrong output shape (testkit)")
    register("testkit-notmodule", _notmodule, description="factory returns a dict (testkit)")
    register("densenet121-hpa", _net, description="clashes with a built-in name (testkit)")


@hookimpl
def register_denoisers(register):
    register("testkit-knn-vote", _knn_vote, description="blend each cell's labels with its k neighbours' (testkit)")
