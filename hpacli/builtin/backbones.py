"""Built-in backbones: every timm model name (4 input channels, 19 outputs)."""

from __future__ import annotations

from .. import hookimpl


def _timm_factory(name: str, num_classes: int = 19, in_chans: int = 4, **kwargs):
    from ..models.timm_wrap import TimmClassifier

    return TimmClassifier(name, num_classes=num_classes, in_chans=in_chans, **kwargs)


def _densenet_hpa_factory(num_classes: int = 19, in_chans: int = 4, **kwargs):
    from ..models.densenet_hpa import DenseNetHPA

    return DenseNetHPA(num_classes=num_classes, in_chans=in_chans, **kwargs)


def _timm_names():
    """Every timm model name; imports timm (and torch), so it is called only when a name
    is looked up that nothing registered by itself, or when names are listed."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub at run time
    import timm

    return timm.list_models()


@hookimpl
def register_backbones(register):
    register.family(_timm_names, _timm_factory, description="timm: every timm model name")
    register("densenet121-hpa", _densenet_hpa_factory, description="seed image model: DenseNet121 + avg|max head")
