"""Built-in backbones: every timm model name (4 input channels, 19 outputs)."""

from __future__ import annotations

from functools import partial

from .. import hookimpl


def _timm_factory(name: str, num_classes: int = 19, in_chans: int = 4, **kwargs):
    from ..models.timm_wrap import TimmClassifier

    return TimmClassifier(name, num_classes=num_classes, in_chans=in_chans, **kwargs)


def _densenet_hpa_factory(num_classes: int = 19, in_chans: int = 4, **kwargs):
    from ..models.densenet_hpa import DenseNetHPA

    return DenseNetHPA(num_classes=num_classes, in_chans=in_chans, **kwargs)


@hookimpl
def register_backbones(register):
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub at run time
    import timm

    for name in timm.list_models():
        register(name, partial(_timm_factory, name), description="timm")
    register("densenet121-hpa", _densenet_hpa_factory, description="seed image model: DenseNet121 + avg|max head")
