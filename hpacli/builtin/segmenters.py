"""Built-in segmenters, registered through the plugin hook like any third-party ones."""

from __future__ import annotations

from .. import hookimpl


def _classical(**kw):
    from ..segment.classical import ClassicalSegmenter

    return ClassicalSegmenter(**kw)


def _hpa_unet(**kw):
    from ..segment.hpa_unet import HpaUnetSegmenter

    return HpaUnetSegmenter(**kw)


@hookimpl
def register_segmenters(register):
    register("classical", _classical,
             description="weight-free: nuclei from blue, seeded watershed over red+yellow (default)")
    register("hpa-unet", _hpa_unet,
             description="HPA DPN-UNet pair from local weight files (--nuclei-model/--cell-model) + post-processing")
