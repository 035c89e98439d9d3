"""Built-in segmenters, registered through the plugin hook like any third-party ones."""

from __future__ import annotations

from .. import hookimpl
from ..registry import lazy


@hookimpl
def register_segmenters(register):
    register("classical", lazy("hpacli.segment.classical:ClassicalSegmenter"),
             description="weight-free: nuclei from blue, seeded watershed over red+yellow (default)")
    register("hpa-unet", lazy("hpacli.segment.hpa_unet:HpaUnetSegmenter"),
             description="HPA DPN-UNet pair from local weight files (-o nuclei_model=... cell_model=...) "
                         "+ post-processing")
