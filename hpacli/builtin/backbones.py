"""Built-in backbones: the seed's ``densenet121-hpa`` and every timm model name (a family,
listed lazily: listing timm's names imports torch)."""

from __future__ import annotations

from .. import hookimpl
from ..registry import lazy


def _timm_names():
    from ..models.timm_wrap import timm_model_names

    return timm_model_names()


@hookimpl
def register_backbones(register):
    register("densenet121-hpa", lazy("hpacli.models.densenet_hpa:DenseNetHPA"),
             description="seed image model: DenseNet121 + avg|max head")
    register.family(_timm_names, lazy("hpacli.models.timm_wrap:TimmClassifier"), description="timm: every timm model name")
