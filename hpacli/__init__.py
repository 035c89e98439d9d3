"""hpacli: the `hpa` pipeline for Human Protein Atlas single-cell classification.

The package keeps its top level import-light (no torch) so that `hpa --help` is fast.
Public functions are imported lazily on first attribute access.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

import pluggy

try:
    __version__ = version("hpacli")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

hookimpl = pluggy.HookimplMarker("hpa")

# name -> module that defines it; resolved on first use (PEP 562)
_LAZY = {
    "open_store": "hpacli.store",
    "Store": "hpacli.store",
    "create_backbone": "hpacli.registry",
    "create_segmenter": "hpacli.registry",
    "create_denoiser": "hpacli.registry",
    "label_cells_from_maps": "hpacli.segment.postprocess",
    "load_weights": "hpacli.models.weightfile",
}

__all__ = ["__version__", "hookimpl", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hpacli' has no attribute {name!r}")
